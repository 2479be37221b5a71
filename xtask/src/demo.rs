//! The `demo` task: run the newest step with a little script that shows, line by
//! line, what the container sees that the host does not.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{artifacts, as_root, command_line, display_path, rootfs, setup, shell_quote};

/// What the demo shows inside the container: (from step, narration, shell command).
/// Steps 01 and 02 run the host's programs (no rootfs yet), so they only show the
/// basics; a later step adds its part with one line here (e.g. `(6, "...", "ip addr")`).
#[rustfmt::skip]
const SHOW: &[(u32, &str, &str)] = &[
    (1, "The hostname in here: the container has its own UTS namespace", "hostname"),
    (1, "Our PID: in a new PID namespace (step 02 on) the first process is 1", "echo \"my PID: $$\""),
    (3, "The processes we can see: only the container's own", "ps -o pid,user,comm"),
    (3, "The root directory: the workshop rootfs, not the host's /", "ls /"),
    (3, "And the file that proves it", "cat /etc/workshop-release"),
    (4, "Who we are: root, in here (try --userns: still root inside, uid 100000 outside)", "id"),
    (5, "Our network: eth0, with an address of our own on the workshop bridge", "ip addr show eth0"),
    (5, "The bridge on the host side answers", "ping -c 1 -W 1 10.77.0.1"),
    (7, "A file from the image's app layer, and the base's /etc/motd it deleted", "cat /app/hello.txt; ls /etc/motd"),
    (8, "Write a file through the volume mounted on /shared", "echo 'written inside the container' > /shared/hello.txt"),
];

/// What the demo needs from the host: busybox-static makes the containers' root
/// filesystem, iproute2's `ip` wires their network (from step 05).
const PACKAGES: [&str; 2] = ["busybox-static", "iproute2"];

/// The `demo` task. `prebuilt`: a directory with the step binaries and the probe,
/// for a machine without cargo (the VM tier's systemd guest proves the set-up path).
pub fn run(prebuilt: Option<&Path>) -> Result<()> {
    // First what a fresh machine lacks, as `test` does: a learner's first command must work.
    setup::install(
        &PACKAGES,
        "the demo builds the containers' root filesystem from a static busybox, and the network steps use ip",
    )?;
    let (steps, probe) = match prebuilt {
        Some(dir) => artifacts::prebuilt(dir)?,
        None => (artifacts::build_steps()?, artifacts::build_probe()?),
    };
    let rootfs = rootfs::prepare(&probe)?;
    let step = steps.last().context("no steps")?;

    println!();
    println!("==> demo: step {} ({})", step.name, display_path(&step.bin));
    let before = host_hostname()?;
    println!("# On the host, the hostname is {before:?}.");
    println!("# Now we start /bin/sh in a container with the hostname \"demo-container\":");
    let mut args: Vec<String> = ["run", "--rm", "--hostname", "demo-container"].map(String::from).to_vec();
    if step.number < 7 {
        args.remove(1); // --rm arrives with step 07's container layers
    }
    // From step 07 the demo runs on the example image, from 08 with a volume.
    let volume = crate::target_dir().join("demo-volume");
    if step.number >= 7 {
        crate::image::ensure(step, &rootfs)?;
        args.extend(["--image".into(), crate::image::NAME.into()]);
    }
    if step.number >= 8 {
        let _ = std::fs::remove_dir_all(&volume);
        std::fs::create_dir_all(&volume)?;
        args.extend(["-v".into(), format!("{}:/shared", volume.display())]);
    }
    args.extend(["--", "/bin/sh", "-c"].map(String::from));
    println!("$ {} {} '<the script>'", display_path(&step.bin), args.join(" "));
    println!("# Everything below, up to \"Back on the host\", comes from inside the container.");
    // In a scratch network namespace: from step 05 the runtime makes a bridge
    // and veths, and the demo should never touch the machine's own interfaces.
    println!("# (The demo runs it in a scratch network namespace, so your network is untouched.)");
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"]);
    cmd.arg(&step.bin).args(args).arg(script(step.number)).env("WORKSHOP_ROOTFS", &rootfs);
    let mut cmd = as_root(cmd)?;
    // Not `run()`: it would print the whole script; the error still shows it all.
    let status = cmd.status().with_context(|| format!("could not start `{}`", command_line(&cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", command_line(&cmd));
    }

    let after = host_hostname()?;
    println!();
    if after != before {
        bail!("the host's hostname changed from {before:?} to {after:?}: the container was not isolated");
    }
    println!("# Back on the host, the hostname is still {after:?}: unchanged.");
    if step.number >= 8 {
        let file = volume.join("hello.txt");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("the volume's file {}", file.display()))?;
        println!(
            "# And the file the container wrote through its volume is on the host, in {}:",
            display_path(&file)
        );
        print!("{text}");
    }
    Ok(())
}

/// The shell script for a step: each command echoed with its narration, then run.
fn script(step: u32) -> String {
    let mut lines = Vec::new();
    for (since, narration, command) in SHOW {
        if step >= *since {
            lines.push(format!(
                "echo; echo {}; echo {}; {command}",
                shell_quote(&format!("# {narration}")),
                shell_quote(&format!("$ {command}"))
            ));
        }
    }
    lines.join("\n")
}

fn host_hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("could not read /proc/sys/kernel/hostname")?;
    Ok(name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_steps_only_show_hostname_and_pid() {
        let script = script(2);
        assert!(script.contains("; hostname"));
        assert!(script.contains("echo \"my PID: $$\""));
        assert!(!script.contains("; ps"));
        assert!(!script.contains("workshop-release"));
    }

    #[test]
    fn rootfs_steps_show_the_rootfs() {
        let script = script(3);
        assert!(script.contains("; ps -o pid,user,comm"));
        assert!(script.contains("; ls /"));
        assert!(script.contains("; cat /etc/workshop-release"));
    }

    #[test]
    fn script_runs_in_a_shell() {
        let out = Command::new("/bin/sh").args(["-c", &script(1)]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("# The hostname in here"));
        assert!(text.contains("$ hostname"));
        assert!(text.contains("my PID: "));
    }
}
