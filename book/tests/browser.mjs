// Opens the rendered book in a real headless browser (Debian's chromium) and checks
// what a reader would notice: every page loads without console errors or failed
// requests, every mermaid diagram becomes an SVG, every chapter's quiz can be
// taken (Start, an answer per question, Submit, then the answer review with an
// explanation per question), and the search finds a term.
// Screenshots of a few pages go to SHOT_DIR (test artefacts, not committed).
//
// Run by `cargo xtask test --tier book`; by hand:
//   node book/tests/browser.mjs BOOK_DIR SHOT_DIR [CHROMIUM] [SEARCH_TERM EXPECTED_PAGE]
// The pages are served over http://127.0.0.1 by a small static server in this script.

import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { extname, join, normalize, relative, sep } from "node:path";
import { chromium } from "playwright-core";

const [bookDir, shotDir, executablePath = "/usr/bin/chromium", term = "pivot_root", expectedPage = "03-mnt.html"] =
  process.argv.slice(2);
if (!bookDir || !shotDir) {
  console.error("usage: node browser.mjs BOOK_DIR SHOT_DIR [CHROMIUM] [SEARCH_TERM EXPECTED_PAGE]");
  process.exit(2);
}

// Pages that are not chapters: mdbook's 404 page links with absolute paths, print.html repeats the book.
const SKIP = new Set(["404.html", "print.html", "toc.html"]);
// Pages worth a screenshot (when they exist).
const SHOTS = [
  "index.html",
  "01-uts.html",
  "02-pid.html",
  "04-user.html",
  "05-net.html",
  "06-cgroups.html",
  "07-overlay.html",
  "08-volumes.html",
];
// Without these flags Chromium tries the network (updates, sync, QUIC probes) and fails here.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json",
  ".woff": "font/woff",
  ".woff2": "font/woff2",
  ".ttf": "font/ttf",
};

// Chapters are NN-name.html: each has exactly one quiz (mdbook-quiz).
const CHAPTER = /^\d\d-[^/]*\.html$/;

// Take a chapter's quiz as a reader does; returns the problems found.
async function takeQuiz(tab, page) {
  const placeholders = tab.locator(".quiz-placeholder");
  const count = await placeholders.count();
  if (count !== 1) return [`chapter ${page}: ${count} quizzes on the page, expected 1`];
  const quiz = placeholders.first();
  const questions = await quiz.evaluate((el) => {
    try {
      return JSON.parse(el.dataset.quizQuestions).questions.length;
    } catch {
      return 0;
    }
  });
  if (questions === 0) return [`chapter ${page}: the quiz has no questions (data-quiz-questions)`];
  const start = quiz.locator("button.start");
  try {
    await start.waitFor({ state: "visible", timeout: 10000 });
  } catch {
    return [`chapter ${page}: the quiz did not render (no Start button: is quiz-embed.iife.js loaded?)`];
  }
  await start.click();
  for (let n = 1; n <= questions; n++) {
    const choice = quiz.locator(".response input[type=radio], .response input[type=checkbox]").first();
    try {
      await choice.waitFor({ state: "visible", timeout: 5000 });
    } catch {
      return [`chapter ${page}: question ${n} of ${questions} shows no answer to pick`];
    }
    await choice.check();
    const submit = quiz.locator("input[type=submit]");
    if ((await submit.count()) !== 1) return [`chapter ${page}: question ${n} has no Submit button`];
    const prompt = await quiz.locator(".prompt").first().innerText();
    await submit.click();
    // The next question, or the review after the last one, replaces this one.
    try {
      await tab.waitForFunction(
        ([el, before]) => {
          if (el.querySelector(".answer-wrapper")) return true;
          const now = el.querySelector(".prompt");
          return now !== null && now.innerText !== before;
        },
        [await quiz.elementHandle(), prompt],
        { timeout: 5000 },
      );
    } catch {
      return [`chapter ${page}: question ${n} of ${questions} did not move on after Submit`];
    }
  }
  try {
    await quiz.locator("h3", { hasText: "Answer Review" }).waitFor({ timeout: 5000 });
  } catch {
    return [`chapter ${page}: no answer review after the last of ${questions} questions`];
  }
  // With wrong answers, the review offers to retry or to see the answers.
  const giveUp = quiz.locator("button", { hasText: "see the correct answers" });
  if ((await giveUp.count()) > 0) await giveUp.first().click();
  const reviewed = await quiz.locator(".answer-wrapper").count();
  if (reviewed !== questions) return [`chapter ${page}: the review shows ${reviewed} of ${questions} questions`];
  const explained = await quiz
    .locator(".answer-wrapper .context")
    .evaluateAll((els) => els.filter((e) => e.textContent.trim().length > 0).length);
  if (explained !== questions) {
    return [`chapter ${page}: the review explains ${explained} of ${questions} answers (context)`];
  }
  return [];
}

function pages(dir) {
  const found = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      found.push(...pages(path));
    } else if (name.endsWith(".html")) {
      found.push(relative(bookDir, path).split(sep).join("/"));
    }
  }
  return found.filter((page) => !SKIP.has(page)).sort();
}

function serve(root) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    let path = normalize(join(root, decodeURIComponent(url.pathname)));
    if (!path.startsWith(normalize(root))) {
      res.writeHead(403).end();
      return;
    }
    try {
      if (statSync(path).isDirectory()) path = join(path, "index.html");
      const body = readFileSync(path);
      res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const failures = [];
const fail = (page, what) => failures.push(`${page}: ${what}`);

const server = await serve(bookDir);
const base = `http://127.0.0.1:${server.address().port}/`;
const profile = mkdtempSync(join(tmpdir(), "book-chromium-"));
mkdirSync(shotDir, { recursive: true });
// A persistent context is the only way to hand Chromium a user-data-dir of our own (a fresh one).
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: CHROMIUM_ARGS,
  viewport: { width: 1200, height: 900 },
});

try {
  const list = pages(bookDir);
  if (list.length === 0) fail(bookDir, "no pages found");
  let diagrams = 0;
  let quizzes = 0;
  for (const page of list) {
    const tab = await context.newPage();
    const problems = [];
    tab.on("console", (msg) => {
      if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
    });
    tab.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    tab.on("requestfailed", (req) => problems.push(`request failed: ${req.url()}`));
    tab.on("response", (res) => {
      if (res.status() >= 400) problems.push(`HTTP ${res.status()}: ${res.url()}`);
    });
    await tab.goto(base + page, { waitUntil: "load" });
    const mermaid = await tab.locator("pre.mermaid").count();
    if (mermaid > 0) {
      try {
        await tab.waitForFunction(
          (n) => document.querySelectorAll("pre.mermaid svg").length === n,
          mermaid,
          { timeout: 20000 },
        );
        diagrams += mermaid;
      } catch {
        const drawn = await tab.locator("pre.mermaid svg").count();
        problems.push(`${drawn} of ${mermaid} mermaid diagrams rendered as SVG`);
      }
      const errors = await tab.locator("pre.mermaid:has(.error-text, [aria-roledescription=error])").count();
      if (errors > 0) problems.push(`${errors} mermaid diagrams show a syntax error`);
    }
    if (SHOTS.includes(page)) {
      await tab.screenshot({ path: join(shotDir, page.replace(/\.html$/, ".png")), fullPage: false });
    }
    let quizzed = "";
    if (CHAPTER.test(page)) {
      const quizProblems = await takeQuiz(tab, page).catch((err) => [
        `chapter ${page}: taking the quiz failed: ${err.message.split("\n")[0]}`,
      ]);
      problems.push(...quizProblems);
      if (quizProblems.length === 0) {
        quizzes += 1;
        quizzed = ", quiz taken";
        await tab.locator(".quiz-placeholder").screenshot({ path: join(shotDir, page.replace(/\.html$/, "-quiz.png")) });
      }
    }
    for (const problem of problems) fail(page, problem);
    console.log(
      `${problems.length === 0 ? "ok  " : "FAIL"} ${page}${mermaid ? ` (${mermaid} diagrams)` : ""}${quizzed}`,
    );
    await tab.close();
  }

  // The search: the toolbar button opens the bar, typing shows results.
  const tab = await context.newPage();
  await tab.goto(base + "index.html", { waitUntil: "load" });
  await tab.click("#mdbook-search-toggle");
  // mdbook searches on keyup: type the term key by key, as a reader does.
  await tab.locator("#mdbook-searchbar").pressSequentially(term);
  try {
    await tab.waitForFunction(
      (expected) =>
        [...document.querySelectorAll("#mdbook-searchresults a")].some((a) =>
          a.getAttribute("href").startsWith(expected),
        ),
      expectedPage,
      { timeout: 10000 },
    );
    const count = await tab.locator("#mdbook-searchresults li").count();
    console.log(`ok   search for "${term}": ${count} results, one in ${expectedPage}`);
  } catch {
    fail("search", `searching for "${term}" did not list ${expectedPage}`);
  }
  await tab.screenshot({ path: join(shotDir, "search.png") });
  await tab.close();
  const chapters = list.filter((page) => CHAPTER.test(page)).length;
  if (chapters === 0) fail(bookDir, "no chapter pages (NN-name.html) found");
  console.log(`${list.length} pages, ${diagrams} diagrams, ${quizzes} of ${chapters} quizzes taken; screenshots in ${shotDir}`);
} finally {
  await context.close();
  server.close();
  rmSync(profile, { recursive: true, force: true });
}

if (failures.length > 0) {
  console.error(`\n${failures.length} problems in the rendered book:`);
  for (const failure of failures) console.error(`  ${failure}`);
  process.exit(1);
}
