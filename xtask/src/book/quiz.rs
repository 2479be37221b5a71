//! The chapters' quizzes: `book/quizzes/NN-name.toml`, in mdbook-quiz's format,
//! shown at the end of `book/src/NN-name.md` by `{{#quiz ../quizzes/NN-name.toml}}`.
//!
//! A quiz is not graded; it is for the reader. What this module checks is that a
//! quiz cannot teach something the book's tested output contradicts. A question
//! may refer to an output line of a chapter with a TOML comment inside its
//! `[[questions]]` table:
//!
//! ```toml
//! # shown-by: 06-cgroups.md "exit status: 137"
//! ```
//!
//! and then
//!   - the output of a ```console block of `book/src/06-cgroups.md` (what the book
//!     tier runs and compares) has a line that contains `exit status: 137`;
//!   - the question's right answer contains that text, and no wrong one does;
//!   - the text is one the console tier compares literally: it renames pids,
//!     container ids, digests, namespace numbers and times (`commands::normalise`),
//!     and a quote of those (even `01:00` in `lowerdir=01:00`) would only be
//!     checked against the book's text, not against what the command prints.
//!
//! Every quiz needs at least one such reference. The check also keeps what
//! mdbook-quiz needs to leave the sources alone: every question has an `id` (the
//! preprocessor writes a random one into the file otherwise), unique in the book,
//! and an explanation (`context`). And every chapter shows its own quiz, once.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::commands;

/// The comment that refers a question to a tested output line.
const SHOWN_BY: &str = "# shown-by:";

/// How many questions a chapter's quiz has.
const QUESTIONS: std::ops::RangeInclusive<usize> = 3..=6;

/// One `# shown-by: FILE "TEXT"` comment.
#[derive(Debug, PartialEq)]
pub(crate) struct Reference {
    /// The question it belongs to, counted from 0 (the `[[questions]]` before it).
    pub(crate) question: usize,
    /// Its line in the quiz file, counted from 1.
    pub(crate) line: usize,
    /// A markdown file of book/src, such as `06-cgroups.md`.
    pub(crate) file: String,
    /// The text an output line contains.
    pub(crate) text: String,
}

/// The `# shown-by:` comments of a quiz file.
pub(crate) fn references(quiz: &str) -> std::result::Result<Vec<Reference>, String> {
    let mut found = Vec::new();
    let mut question: Option<usize> = None;
    for (i, line) in quiz.lines().enumerate() {
        let line = line.trim();
        if line == "[[questions]]" {
            question = Some(question.map_or(0, |q| q + 1));
            continue;
        }
        let Some(rest) = line.strip_prefix(SHOWN_BY) else { continue };
        let place = format!("line {}", i + 1);
        let question =
            question.ok_or_else(|| format!("{place}: {SHOWN_BY} before the first [[questions]]"))?;
        let rest = rest.trim();
        let (file, quoted) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{place}: expected {SHOWN_BY} FILE \"TEXT\", got {rest:?}"))?;
        let quoted = quoted.trim();
        let text = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("{place}: the text must be in double quotes, got {quoted:?}"))?;
        if !file.ends_with(".md") || file.contains('/') {
            return Err(format!("{place}: {file:?} is not a markdown file of book/src (like 06-cgroups.md)"));
        }
        found.push(Reference { question, line: i + 1, file: file.to_string(), text: text.to_string() });
    }
    Ok(found)
}

/// The output lines of every ```console block of a markdown text (the lines the
/// book tier compares with what the commands print).
pub(crate) fn console_output(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for block in commands::parse(markdown) {
        for cmd in &block.commands {
            lines.extend(cmd.expected_output(&block.indent).lines().map(str::to_string));
        }
    }
    lines
}

/// A question's right answers and its distractors, as mdbook-quiz reads them
/// (`answer.answer` is a string or a list; `prompt.distractors` a list).
fn choices(question: &toml::Table) -> (Vec<String>, Vec<String>) {
    let strings = |value: Option<&toml::Value>| -> Vec<String> {
        match value {
            Some(toml::Value::String(s)) => vec![s.clone()],
            Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    };
    let field = |table: &str, key: &str| question.get(table).and_then(|t| t.get(key));
    (strings(field("answer", "answer")), strings(field("prompt", "distractors")))
}

/// The problems of one quiz file. `chapter` gives a book/src markdown file's text by
/// name; `ids` collects the question ids of the whole book (they must be unique).
pub(crate) fn problems(
    name: &str,
    quiz: &str,
    chapter: &dyn Fn(&str) -> Option<String>,
    ids: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("{name}: {what}"));
    let table: toml::Table = match toml::from_str(quiz) {
        Ok(table) => table,
        Err(err) => {
            problem(format!("not TOML: {err}"));
            return problems;
        }
    };
    let questions: Vec<&toml::Table> = match table.get("questions").and_then(|q| q.as_array()) {
        Some(list) => list.iter().filter_map(|q| q.as_table()).collect(),
        None => Vec::new(),
    };
    if !QUESTIONS.contains(&questions.len()) {
        problem(format!(
            "{} questions; a chapter's quiz has {} to {}",
            questions.len(),
            QUESTIONS.start(),
            QUESTIONS.end()
        ));
    }
    for (n, question) in questions.iter().enumerate() {
        let label = format!("question {}", n + 1);
        match question.get("id").and_then(|id| id.as_str()) {
            Some(id) if !ids.insert(id.to_string()) => problem(format!("{label}: id {id:?} is used twice")),
            Some(_) => {}
            None => problem(format!(
                "{label} has no id (mdbook-quiz would write a random one into the file): add id = \"{}-{}\"",
                name.trim_end_matches(".toml"),
                n + 1
            )),
        }
        if question.get("context").and_then(|c| c.as_str()).is_none_or(|c| c.trim().is_empty()) {
            problem(format!("{label} has no explanation (context = \"\"\"...\"\"\")"));
        }
        if question.get("type").and_then(|t| t.as_str()) == Some("MultipleChoice") {
            let (right, wrong) = choices(question);
            if right.is_empty() || wrong.is_empty() {
                problem(format!("{label}: a multiple choice needs answer.answer and prompt.distractors"));
            }
        }
    }
    let references = match references(quiz) {
        Ok(references) => references,
        Err(err) => {
            problem(err);
            return problems;
        }
    };
    if references.is_empty() {
        problem(format!("no question refers to a tested output ({SHOWN_BY} FILE \"TEXT\")"));
    }
    for r in &references {
        let place = format!("line {} ({SHOWN_BY} {} {:?})", r.line, r.file, r.text);
        let Some(question) = questions.get(r.question) else {
            problem(format!("{place}: no question {}", r.question + 1));
            continue;
        };
        match chapter(&r.file) {
            None => problem(format!("{place}: book/src/{} does not exist", r.file)),
            Some(markdown) => {
                if !console_output(&markdown).iter().any(|line| line.contains(&r.text)) {
                    problem(format!("{place}: no ```console output line of {} contains it", r.file));
                }
            }
        }
        // The console tier compares outputs after renaming pids, container ids, digests and
        // namespace numbers: a quote of those would be checked against the book's text only.
        if commands::normalise(&r.text) != r.text {
            problem(format!(
                "{place}: the console tier does not compare this text literally (it reads {:?}): quote a fixed part",
                commands::normalise(&r.text)
            ));
        }
        let (right, wrong) = choices(question);
        if !right.iter().any(|answer| answer.contains(&r.text)) {
            problem(format!("{place}: the right answer does not say it: {right:?}"));
        }
        for distractor in wrong.iter().filter(|d| d.contains(&r.text)) {
            problem(format!("{place}: a wrong answer says it too: {distractor:?}"));
        }
    }
    problems
}

/// The `{{#quiz ...}}` line of a chapter's markdown, for quiz file NAME.
fn include_line(name: &str) -> String {
    format!("{{{{#quiz ../quizzes/{name}}}}}")
}

/// The quiz files of `book/quizzes`, sorted by name.
fn quiz_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Check every quiz of the book (see the module comment).
pub fn check() -> Result<()> {
    let book = super::book_dir();
    let src = book.join("src");
    let chapter = |file: &str| std::fs::read_to_string(src.join(file)).ok();
    let names = quiz_files(&book.join("quizzes"))?;
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for name in &names {
        let path = book.join("quizzes").join(name);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        problems.extend(self::problems(name, &text, &chapter, &mut ids));
    }
    // Every chapter NN-name.md shows quizzes/NN-name.toml, once, and nothing else does.
    for entry in std::fs::read_dir(&src).with_context(|| format!("list {}", src.display()))? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".md") else { continue };
        let text = chapter(&file).unwrap_or_default();
        let own = format!("{stem}.toml");
        let is_chapter = stem.len() > 3 && stem.as_bytes()[..2].iter().all(u8::is_ascii_digit);
        let count = text.matches(&include_line(&own)).count();
        let any = text.matches("{{#quiz ").count();
        if is_chapter && (count != 1 || any != 1) {
            problems.push(format!(
                "book/src/{file}: needs exactly one `{}` (has {any} quizzes)",
                include_line(&own)
            ));
        } else if !is_chapter && any > 0 {
            problems.push(format!("book/src/{file}: only the chapters NN-name.md have quizzes"));
        }
        if is_chapter && !names.contains(&own) {
            problems.push(format!("book/src/{file}: there is no book/quizzes/{own}"));
        }
    }
    if !problems.is_empty() {
        bail!("{} quiz problems:\n  {}", problems.len(), problems.join("\n  "));
    }
    println!("book: {} quizzes, each answer that quotes a console output agrees with it", names.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAPTER: &str = "# 06\n\n```console\n$ sudo run --memory 32m -- tail /dev/zero; echo \"exit status: $?\"\nkilled: out of memory\nexit status: 137\n```\n\n```sh\necho \"exit status: 1\"\n```\n";

    fn quiz(answer: &str, distractor: &str, shown_by: &str) -> String {
        format!(
            "# a quiz\n\n[[questions]]\nid = \"q-1\"\ntype = \"MultipleChoice\"\nprompt.prompt = \"first\"\nanswer.answer = \"a\"\nprompt.distractors = [\"b\"]\ncontext = \"why\"\n\n\
             [[questions]]\nid = \"q-2\"\ntype = \"MultipleChoice\"\nprompt.prompt = \"At the limit?\"\nanswer.answer = \"{answer}\"\nprompt.distractors = [\"{distractor}\"]\ncontext = \"\"\"\nThe OOM killer.\n\"\"\"\n{shown_by}\n\n\
             [[questions]]\nid = \"q-3\"\ntype = \"MultipleChoice\"\nprompt.prompt = \"third\"\nanswer.answer = [\"c\", \"d\"]\nprompt.distractors = [\"e\"]\ncontext = \"why\"\n"
        )
    }

    fn check(quiz: &str) -> Vec<String> {
        let chapter = |file: &str| (file == "06-cgroups.md").then(|| CHAPTER.to_string());
        problems("06-cgroups.toml", quiz, &chapter, &mut BTreeSet::new())
    }

    const SHOWN: &str = "# shown-by: 06-cgroups.md \"exit status: 137\"";

    #[test]
    fn parses_references() {
        let text = quiz("137", "1", SHOWN);
        let refs = references(&text).unwrap();
        assert_eq!(
            refs,
            vec![Reference {
                question: 1,
                line: 20,
                file: "06-cgroups.md".into(),
                text: "exit status: 137".into()
            }]
        );
        assert!(references("# shown-by: a.md \"x\"\n").unwrap_err().contains("before the first"));
        assert!(references("[[questions]]\n# shown-by: a.md x\n").unwrap_err().contains("double quotes"));
        assert!(references("[[questions]]\n# shown-by: a.md\n").unwrap_err().contains("expected"));
        assert!(references("[[questions]]\n# shown-by: src/a.md \"x\"\n")
            .unwrap_err()
            .contains("not a markdown"));
        assert!(references("[[questions]]\n# shown-by: a.md \"\"\n").unwrap_err().contains("double quotes"));
    }

    #[test]
    fn console_output_is_the_output_of_console_blocks_only() {
        let lines = console_output(CHAPTER);
        assert_eq!(lines, vec!["killed: out of memory", "exit status: 137"]);
    }

    #[test]
    fn an_answer_that_agrees_passes() {
        let text = quiz("SIGKILL: `exit status: 137`", "`exit status: 1`", SHOWN);
        assert_eq!(check(&text), Vec::<String>::new());
    }

    #[test]
    fn an_answer_that_contradicts_the_output_fails() {
        let text = quiz("`exit status: 1`", "`exit status: 137`", SHOWN);
        let problems = check(&text);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("the right answer does not say it"), "{problems:?}");
        assert!(problems[1].contains("a wrong answer says it too"), "{problems:?}");
    }

    #[test]
    fn a_reference_to_text_the_book_does_not_print_fails() {
        // In a ```sh block only: not tested output.
        let text = quiz("`exit status: 1`", "x", "# shown-by: 06-cgroups.md \"exit status: 1\"");
        let problems = check(&text);
        // "exit status: 1" is a prefix of the tested "exit status: 137": found.
        assert_eq!(problems, Vec::<String>::new());
        let text = quiz("no memory", "x", "# shown-by: 06-cgroups.md \"no memory\"");
        let problems = check(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no ```console output line of 06-cgroups.md contains it"));
        let text = quiz("2ca60faea4fb", "x", "# shown-by: 06-cgroups.md \"2ca60faea4fb\"");
        assert!(
            check(&text).iter().any(|p| p.contains("does not compare this text literally")),
            "{:?}",
            check(&text)
        );
        let text = quiz("137", "x", "# shown-by: 09-none.md \"137\"");
        assert!(check(&text)[0].contains("book/src/09-none.md does not exist"));
    }

    #[test]
    fn a_quiz_without_a_reference_ids_or_explanations_fails() {
        let text = quiz("a", "b", "");
        assert!(check(&text).iter().any(|p| p.contains("no question refers to a tested output")));
        let text = quiz("137", "1", SHOWN).replace("id = \"q-3\"\n", "").replace("context = \"why\"\n", "");
        let problems = check(&text);
        assert!(problems.iter().any(|p| p.contains("question 3 has no id")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("question 1 has no explanation")), "{problems:?}");
        let text = quiz("137", "1", SHOWN).replace("q-3", "q-1");
        assert!(check(&text).iter().any(|p| p.contains("id \"q-1\" is used twice")));
        let text =
            "[[questions]]\nid = \"x\"\ncontext = \"y\"\n# shown-by: 06-cgroups.md \"exit status: 137\"\n";
        assert!(check(text).iter().any(|p| p.contains("1 questions; a chapter's quiz has 3 to 6")));
        assert!(check("not = [toml").iter().any(|p| p.contains("not TOML")));
    }

    #[test]
    fn the_include_line_is_mdbook_quiz_syntax() {
        assert_eq!(include_line("01-uts.toml"), "{{#quiz ../quizzes/01-uts.toml}}");
    }
}
