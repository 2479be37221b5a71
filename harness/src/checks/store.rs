//! Where a step keeps its images, for the checks that look at them from the host.
//! Steps 07-09: one directory per image, IMAGES/NAME. Step 10 on: the
//! content-addressed STORE, where layers are shared by images and tags name
//! images (`image inspect` says which layer directories an image uses).

use crate::paths::{IMAGES, STORE};
use crate::{Ctx, Run};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The first step with the content-addressed store.
pub(super) const STORE_SINCE: u8 = 10;

/// The directories of an image's layers on disk (what no container may change).
pub(super) fn layer_dirs(ctx: &Ctx, name: &str) -> Result<Vec<PathBuf>> {
    if ctx.step.number < STORE_SINCE {
        return Ok(vec![Path::new(IMAGES).join(name)]);
    }
    let lower = inspect(ctx, name)?["GraphDriver"]["Data"]["LowerDir"].as_str().map(str::to_string);
    let lower = lower.with_context(|| format!("`image inspect {name}` has no GraphDriver.Data.LowerDir"))?;
    let dirs: Vec<PathBuf> = lower.split(':').map(PathBuf::from).collect();
    for dir in &dirs {
        ensure!(dir.is_dir(), "`image inspect {name}`: the layer {} is no directory", dir.display());
    }
    Ok(dirs)
}

/// `image inspect REF`: the one object of its array.
pub(super) fn inspect(ctx: &Ctx, reference: &str) -> Result<Value> {
    let outcome = Run::raw(&ctx.step.bin).args(["image", "inspect", reference]).output()?;
    outcome.expect_status(0)?;
    let json: Value = serde_json::from_str(&outcome.stdout)
        .with_context(|| format!("`image inspect {reference}` printed no JSON\n{}", outcome.transcript()))?;
    match json.as_array().map(Vec::as_slice) {
        Some([object]) => Ok(object.clone()),
        _ => bail!("`image inspect {reference}` printed no array of one object: {json}"),
    }
}

/// What a step's error says about a malformed image name: steps 07-09 "invalid
/// image name", step 10 on Docker's "invalid reference".
pub(super) fn invalid_name(ctx: &Ctx) -> &'static str {
    match ctx.step.number < STORE_SINCE {
        true => "invalid image name",
        false => "invalid reference",
    }
}

/// The word of `invalid_name` that every such error has.
pub(super) fn invalid_name_word(ctx: &Ctx) -> &'static str {
    invalid_name(ctx).rsplit(' ').find(|w| *w != "name").unwrap_or("image")
}

/// Names that steps 07-09 refuse as names but that are well-formed references from
/// step 10 on (a path of two parts; 65 characters): there, images nobody has.
pub(super) fn names_only_before_references() -> [String; 2] {
    ["a/b".to_string(), "x".repeat(65)]
}

/// Whether there is an image by this name (step 10: a tag that names it).
pub(super) fn has_image(ctx: &Ctx, name: &str) -> bool {
    match ctx.step.number < STORE_SINCE {
        true => Path::new(IMAGES).join(name).exists(),
        false => Path::new(STORE).join("tags").join(tag_path(name)).exists(),
    }
}

/// Where step 10 keeps the tag of a reference, below tags/: Docker's normal form,
/// `foo` -> `docker.io/library/foo/latest`, `h:5000/a/b@sha256:X` -> `h:5000/a/b/@sha256:X`.
pub(super) fn tag_path(reference: &str) -> String {
    let (name, tag) = match reference.split_once('@') {
        Some((name, digest)) => (name, format!("@{digest}")),
        None => match reference.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag.to_string()),
            _ => (reference, "latest".to_string()),
        },
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let is_host = first.contains(['.', ':']) || first == "localhost";
    let path = match (is_host, first.is_empty()) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/library/{rest}"),
        (false, false) => format!("docker.io/{name}"),
    };
    format!("{path}/{tag}")
}

/// What is in the image store now (names of layers, links, images, tags, tmp
/// entries; or, before step 10, of the image directories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Contents(BTreeSet<String>);

pub(super) fn contents(ctx: &Ctx) -> Contents {
    let names = |dir: &Path| -> Vec<String> {
        let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
        entries.map(|e| e.path().to_string_lossy().into_owned()).collect()
    };
    if ctx.step.number < STORE_SINCE {
        return Contents(names(Path::new(IMAGES)).into_iter().collect());
    }
    let store = Path::new(STORE);
    let mut all: BTreeSet<String> =
        ["layers", "l", "images", "tmp"].iter().flat_map(|dir| names(&store.join(dir))).collect();
    all.extend(files_under(&store.join("tags")));
    Contents(all)
}

impl Contents {
    /// What is here that was not in `before`.
    pub(super) fn added_since(&self, before: &Contents) -> Vec<String> {
        self.0.difference(&before.0).cloned().collect()
    }

    /// The layer directories (layers/HEX) in it.
    pub(super) fn layers(&self) -> Vec<String> {
        let layers = Path::new(STORE).join("layers");
        self.0.iter().filter(|p| Path::new(p).parent() == Some(&layers)).cloned().collect()
    }
}

/// Fails if the store holds anything that it did not hold `before` (`what` was refused).
pub(super) fn expect_nothing_new(ctx: &Ctx, before: &Contents, what: &str) -> Result<()> {
    let added = contents(ctx).added_since(before);
    ensure!(added.is_empty(), "{what} left in the image store: {added:?}");
    Ok(())
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(entry.path()),
                _ => files.push(entry.path().to_string_lossy().into_owned()),
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::tag_path;

    #[test]
    fn references_have_dockers_normal_form() {
        assert_eq!(tag_path("alpine"), "docker.io/library/alpine/latest");
        assert_eq!(tag_path("user/app:1.0"), "docker.io/user/app/1.0");
        assert_eq!(tag_path("127.0.0.1:5000/workshop/example"), "127.0.0.1:5000/workshop/example/latest");
        assert_eq!(tag_path("localhost/x:t"), "localhost/x/t");
        assert_eq!(tag_path("h.io/a@sha256:ab"), "h.io/a/@sha256:ab");
    }
}
