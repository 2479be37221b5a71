//! The image config: what the image's author said to run, and how.
//!
//! `config.Entrypoint` + `config.Cmd` make the command (a COMMAND given on the
//! command line replaces Cmd, the Entrypoint stays), `config.Env` is the
//! environment (`-e` wins over it), `config.WorkingDir` the directory it starts
//! in, `config.User` who runs it: a name or uid, `:group` or `:gid` optional,
//! looked up in the *image's* /etc/passwd and /etc/group, inside the container.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What the container runs, decided on the host side from the config and the flags.
pub struct Process {
    pub command: Vec<String>,
    /// `KEY=VALUE`, the image's first, then `-e`'s.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

// ANCHOR: process
/// Combines the image config (None: a --rootfs, which has none) with COMMAND and `-e`.
pub fn process(
    config: Option<&Value>,
    command: &[String],
    env: &[String],
    user: Option<&str>,
) -> Result<Process> {
    let empty = Value::Null;
    let config = &config.unwrap_or(&empty)["config"];
    let mut full = strings(&config["Entrypoint"]);
    full.extend(if command.is_empty() { strings(&config["Cmd"]) } else { command.to_vec() });
    if full.is_empty() {
        bail!("no command: give one after the flags (the image has no Entrypoint or Cmd)");
    }
    let mut merged = strings(&config["Env"]);
    for given in env {
        // `-e KEY` alone passes the host's value on, as in Docker.
        let entry = match given.split_once('=') {
            Some(_) => given.clone(),
            None => format!("{given}={}", std::env::var(given).unwrap_or_default()),
        };
        let key = entry.split('=').next().unwrap_or_default().to_string();
        if key.is_empty() {
            bail!("invalid -e {given:?}: use KEY=VALUE");
        }
        merged.retain(|e| e.split('=').next() != Some(&key));
        merged.push(entry);
    }
    let workdir = config["WorkingDir"].as_str().filter(|w| !w.is_empty()).map(str::to_string);
    if workdir.as_ref().is_some_and(|w| !w.starts_with('/')) {
        bail!("refused: the image's WorkingDir {workdir:?} is not an absolute path");
    }
    let user =
        user.map(str::to_string).or(config["User"].as_str().filter(|u| !u.is_empty()).map(str::to_string));
    Ok(Process { command: full, env: merged, workdir, user })
}
// ANCHOR_END: process

// ANCHOR: enter
/// In the child, after `clean_env` and before the hardening: the image's
/// environment and working directory.
pub fn enter(process: &Process) -> Result<()> {
    for entry in &process.env {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        std::env::set_var(key, value);
    }
    if let Some(dir) = &process.workdir {
        // runc makes a missing working directory, and so do we.
        std::fs::create_dir_all(dir).with_context(|| format!("make the working directory {dir}"))?;
        std::env::set_current_dir(dir).with_context(|| format!("chdir {dir}"))?;
    }
    Ok(())
}
// ANCHOR_END: enter

/// Who COMMAND runs as, read from the container's own /etc/passwd and /etc/group.
#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The groups /etc/group lists the user in.
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

// ANCHOR: find_user
/// `name`, `uid`, `name:group`, `uid:gid`...: as `docker run --user` reads it.
pub fn find_user(spec: &str, passwd: &str, group: &str) -> Result<User> {
    let (who, group_part) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    let field = |line: &str, n: usize| line.split(':').nth(n).map(str::to_string);
    let entry = passwd
        .lines()
        .find(|line| field(line, 0).as_deref() == Some(who) || field(line, 2).as_deref() == Some(who));
    let (uid, mut gid, name, home) = match (entry, who.parse::<u32>()) {
        (Some(line), _) => {
            let number = |n| field(line, n).and_then(|f| f.parse::<u32>().ok());
            let uid = number(2).with_context(|| format!("/etc/passwd: a bad line for {who}"))?;
            (uid, number(3).unwrap_or(0), field(line, 0), field(line, 5))
        }
        // A number that /etc/passwd does not list is fine: Docker runs it with gid 0.
        (None, Ok(uid)) => (uid, 0, None, None),
        (None, Err(_)) => bail!("unable to find user {who}: no matching entries in passwd file"),
    };
    if let Some(wanted) = group_part {
        let entry = group.lines().find(|line| {
            field(line, 0).as_deref() == Some(wanted) || field(line, 2).as_deref() == Some(wanted)
        });
        gid = match (entry.and_then(|line| field(line, 2)?.parse().ok()), wanted.parse::<u32>()) {
            (Some(gid), _) | (None, Ok(gid)) => gid,
            _ => bail!("unable to find group {wanted}: no matching entries in group file"),
        };
    }
    let groups = match &name {
        Some(name) => group
            .lines()
            .filter(|line| field(line, 3).is_some_and(|members| members.split(',').any(|m| m == name)))
            .filter_map(|line| field(line, 2)?.parse().ok())
            .collect(),
        None => Vec::new(),
    };
    Ok(User { uid, gid, groups, home })
}
// ANCHOR_END: find_user

// ANCHOR: become_user
/// In the child, just before the capabilities are set: become the image's
/// user. Without CAP_SETUID kept (no PR_SET_KEEPCAPS), setuid to a non-zero
/// uid empties the permitted and effective sets, as Docker's non-root users have them.
pub fn become_user(spec: &str) -> Result<()> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let user = find_user(spec, &read("/etc/passwd"), &read("/etc/group"))?;
    if std::env::var_os("HOME").is_none() || std::env::var("HOME").as_deref() == Ok("/root") {
        std::env::set_var("HOME", user.home.as_deref().unwrap_or("/"));
    }
    let groups: Vec<nix::unistd::Gid> =
        std::iter::once(user.gid).chain(user.groups).map(nix::unistd::Gid::from_raw).collect();
    nix::unistd::setgroups(&groups).context("setgroups")?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(user.gid)).context("setgid")?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(user.uid)).context("setuid")
}
// ANCHOR_END: become_user

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:web:/var/www:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\napp:x:1000:\nstaff:x:50:app,www\n";

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_command_replaces_cmd_and_keeps_the_entrypoint() {
        let config = json!({"config": {"Entrypoint": ["/bin/echo", "hi"], "Cmd": ["there"]}});
        assert_eq!(
            process(Some(&config), &[], &[], None).unwrap().command,
            args(&["/bin/echo", "hi", "there"])
        );
        let given = process(Some(&config), &args(&["you"]), &[], None).unwrap();
        assert_eq!(given.command, args(&["/bin/echo", "hi", "you"]));
        assert!(process(Some(&json!({})), &[], &[], None).is_err());
        assert!(process(None, &[], &[], None).is_err());
        assert_eq!(process(None, &args(&["true"]), &[], None).unwrap().command, args(&["true"]));
    }

    #[test]
    fn dash_e_wins_over_the_images_env() {
        let config = json!({"config": {"Env": ["PATH=/img/bin", "A=1", "B=2"]}});
        let env = process(Some(&config), &args(&["x"]), &args(&["A=one", "C=3=3"]), None).unwrap().env;
        assert_eq!(env, args(&["PATH=/img/bin", "B=2", "A=one", "C=3=3"]));
        assert!(process(Some(&config), &args(&["x"]), &args(&["=x"]), None).is_err());
    }

    #[test]
    fn users_are_found_as_docker_finds_them() {
        let find = |spec| find_user(spec, PASSWD, GROUP).unwrap();
        assert_eq!(
            find("app"),
            User { uid: 1000, gid: 1000, groups: vec![50], home: Some("/home/app".into()) }
        );
        assert_eq!(find("33").uid, 33);
        assert_eq!(find("www:staff").gid, 50);
        assert_eq!(find("1234:5678"), User { uid: 1234, gid: 5678, groups: vec![], home: None });
        assert_eq!(find("4321"), User { uid: 4321, gid: 0, groups: vec![], home: None });
        assert!(find_user("nobody-here", PASSWD, GROUP)
            .unwrap_err()
            .to_string()
            .contains("no matching entries"));
        assert!(find_user("app:nogroup", PASSWD, GROUP).is_err());
    }
}
