//! The `bench` task: how long a container takes, from start to exit of
//! `/bin/true`, next to runc, the kernel's floor (`unshare`) and a VM.
//!
//! Absolute times drift on a shared machine, so everything is measured in one
//! run and compared as ratios. The measuring happens in a worker that xtask
//! starts as root inside a scratch network namespace: the bridge runs never
//! touch the machine's own interfaces.

use crate::{artifacts, as_root, cargo, display_path, rootfs, run as run_cmd, target_dir};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// `cargo xtask bench [--quick] [--publish]`.
pub fn run(quick: bool, publish: bool) -> Result<()> {
    // Release builds: the numbers should be the runtime's, not the debug build's.
    let steps = artifacts::steps()?;
    let mut build = cargo();
    build.args(["build", "--release", "--bins"]);
    for step in &steps {
        build.arg("-p").arg(format!("step-{}", step.name));
    }
    run_cmd(&mut build)?;
    let probe = artifacts::build_probe()?;
    let rootfs = rootfs::prepare(&probe)?;
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let bundle = runc_bundle(&dir, &rootfs)?;

    let out = dir.join("results.json");
    // The worker is this program; a copy, as a later cargo build may replace target/debug/xtask.
    let me = dir.join("xtask-worker");
    std::fs::copy("/proc/self/exe", &me).context("copy xtask for the worker")?;
    let mut worker = Command::new("unshare");
    worker.args(["--net", "--"]).arg(me).arg("bench-worker").arg("--out").arg(&out);
    worker.arg("--bundle").arg(&bundle).arg("--rootfs").arg(&rootfs);
    worker.arg("--bin-dir").arg(target_dir().join("release"));
    if quick {
        worker.arg("--quick");
    }
    run_cmd(&mut as_root(worker)?)?;

    let results: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let table = markdown(&results);
    std::fs::write(dir.join("bench.md"), &table)?;
    std::fs::write(dir.join("bench.svg"), svg(&results))?;
    println!("\n{table}");
    println!("written: {}, bench.md, bench.svg", display_path(&out));
    if publish {
        let generated = crate::workspace_root().join("book/src/generated");
        std::fs::copy(dir.join("bench.md"), generated.join("bench.md"))?;
        std::fs::copy(dir.join("bench.svg"), generated.join("bench.svg"))?;
        println!("published to {}", display_path(&generated));
    }
    Ok(())
}

/// An OCI bundle for runc: the workshop rootfs, running /bin/true, with
/// runc's default namespaces (pid, ipc, uts, mount, network without interfaces).
fn runc_bundle(dir: &Path, rootfs: &Path) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    if bundle.join("config.json").exists() {
        return Ok(bundle);
    }
    std::fs::create_dir_all(&bundle)?;
    run_cmd(Command::new("cp").arg("-a").arg(rootfs).arg(bundle.join("rootfs")))?;
    run_cmd(Command::new("runc").arg("spec").current_dir(&bundle))
        .context("runc spec (apt-get install runc)")?;
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    config["process"]["args"] = json!(["/bin/true"]);
    config["process"]["terminal"] = json!(false);
    config["root"]["readonly"] = json!(true);
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(bundle)
}

/// What the worker is told: where things are and how much to measure.
pub struct Worker {
    pub out: PathBuf,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub bin_dir: PathBuf,
    pub quick: bool,
}

/// One measured configuration.
struct Config {
    label: String,
    group: &'static str,
    argv: Vec<String>,
}

/// Runs inside the scratch network namespace, as root.
pub fn worker(w: Worker) -> Result<()> {
    run_cmd(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    let reps = if w.quick { 3 } else { 25 };
    let rootfs = w.rootfs.to_string_lossy().into_owned();
    let mut configs = vec![
        Config {
            label: "unshare floor (uts,pid,mnt,net)".into(),
            group: "floor",
            argv: words("unshare --uts --pid --mount --net --fork /bin/true"),
        },
        Config {
            label: "unshare floor + user".into(),
            group: "floor",
            argv: words("unshare --uts --pid --mount --net --user --map-root-user --fork /bin/true"),
        },
    ];
    let mut runc_id = 0;
    #[rustfmt::skip]
    let runc_argv = |id: usize| vec!["runc".into(), "run".into(), "--bundle".into(), w.bundle.to_string_lossy().into_owned(), format!("workshop-bench-{}-{id}", std::process::id())];
    for step in 1..=8u32 {
        let Some(bin) = std::fs::read_dir(&w.bin_dir)?.flatten().map(|e| e.path()).find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            name.len() > 3
                && name.starts_with(&format!("{step:02}-"))
                && !name.contains('.')
                && !name.ends_with("-exercise")
                && !name.ends_with("-solution")
        }) else {
            continue;
        };
        let name = bin.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut base = vec![bin.to_string_lossy().into_owned(), "run".into()];
        if step >= 3 {
            base.extend(["--rootfs".into(), rootfs.clone()]);
        }
        if step >= 7 {
            base.push("--rm".into());
        }
        let variants: Vec<(&str, Vec<&str>)> = match step {
            1..=3 => vec![("", vec![])],
            4 => vec![("", vec![]), (" --userns", vec!["--userns"])],
            _ => vec![
                (" --net none", vec!["--net", "none"]),
                (" --net bridge", vec!["--net", "bridge"]),
                (" --net none --userns", vec!["--net", "none", "--userns"]),
            ],
        };
        for (suffix, flags) in variants {
            let mut argv = base.clone();
            argv.extend(flags.iter().map(|f| f.to_string()));
            argv.push("true".into());
            configs.push(Config { label: format!("{name}{suffix}"), group: "steps", argv });
        }
    }

    let mut rows = Vec::new();
    for config in &configs {
        let times = measure(&config.argv, reps)?;
        rows.push(summary(&config.label, config.group, &times));
    }
    // runc: a fresh container id per run.
    let mut runc_times = Vec::new();
    for _ in 0..reps + 2 {
        runc_id += 1;
        let t = time_once(&runc_argv(runc_id))?;
        runc_times.push(t);
    }
    runc_times.drain(..2); // warm-up
    rows.push(summary("runc (same rootfs, no network)", "runc", &runc_times));

    let scaling = if w.quick { json!(null) } else { scaling(&w)? };
    let results = json!({ "reps": reps, "rows": rows, "vm_boot_ms": null, "scaling": scaling });
    std::fs::write(&w.out, serde_json::to_string_pretty(&results)?)?;
    Ok(())
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// Runs `argv` once and returns the wall time in milliseconds; it must exit 0.
fn time_once(argv: &[String]) -> Result<f64> {
    let start = Instant::now();
    let output = Command::new(&argv[0]).args(&argv[1..]).stdin(Stdio::null()).output()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}{}",
            argv.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(ms)
}

/// Two warm-up runs, then `reps` measured ones.
fn measure(argv: &[String], reps: usize) -> Result<Vec<f64>> {
    for _ in 0..2 {
        time_once(argv)?;
    }
    (0..reps).map(|_| time_once(argv)).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

fn summary(label: &str, group: &str, times: &[f64]) -> Value {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "label": label, "group": group, "n": sorted.len(),
        "median_ms": percentile(&sorted, 0.5), "p10_ms": percentile(&sorted, 0.1), "p90_ms": percentile(&sorted, 0.9),
    })
}

/// Start time against layers, volumes and containers started at once (step 08).
fn scaling(w: &Worker) -> Result<Value> {
    let bin = w.bin_dir.join("08-volumes");
    if !bin.exists() {
        return Ok(json!(null));
    }
    let bin = bin.to_string_lossy().into_owned();
    let scratch = target_dir().join("bench/scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;

    let mut layers = Vec::new();
    for n in [1usize, 10, 50, 100] {
        let name = format!("bench-layers-{n}");
        let mut import = vec![
            bin.clone(),
            "image".into(),
            "import".into(),
            name.clone(),
            w.rootfs.to_string_lossy().into_owned(),
        ];
        for i in 1..n {
            let layer = scratch.join(format!("layer-{i}"));
            std::fs::create_dir_all(layer.join("layers"))?;
            std::fs::write(layer.join(format!("layers/{i}")), "a layer\n")?;
            import.push(layer.to_string_lossy().into_owned());
        }
        time_once(&import)?;
        let run = words(&format!("{bin} run --rm --net none --image {name} true"));
        let times = measure(&run, 10);
        let _ = time_once(&[bin.clone(), "image".into(), "rm".into(), name]);
        layers.push(summary(&format!("{n} layers"), "layers", &times?));
    }

    let mut volumes = Vec::new();
    for n in [1usize, 8, 32] {
        let mut run = words(&format!("{bin} run --rm --net none --rootfs {}", w.rootfs.display()));
        for i in 0..n {
            run.extend(["-v".into(), format!("bench-volume-{i}:/v/{i}")]);
        }
        run.push("true".into());
        let times = measure(&run, 10);
        for i in 0..n {
            let _ = time_once(&[bin.clone(), "volume".into(), "rm".into(), format!("bench-volume-{i}")]);
        }
        volumes.push(summary(&format!("{n} volumes"), "volumes", &times?));
    }

    let mut concurrent = Vec::new();
    for n in [1usize, 10, 50] {
        let run = words(&format!("{bin} run --rm --net bridge --rootfs {} true", w.rootfs.display()));
        let start = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|_| {
                Command::new(&run[0]).args(&run[1..]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut failed = 0;
        for child in children {
            if !child.wait_with_output()?.status.success() {
                failed += 1;
            }
        }
        // Each runtime cleans up before it exits: all exited is all cleaned up.
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let leftovers = std::fs::read_dir("/run/workshop/ipam").map(|d| d.count()).unwrap_or(0);
        concurrent
            .push(json!({ "containers": n, "all_done_ms": ms, "failed": failed, "leases_left": leftovers }));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(json!({ "layers": layers, "volumes": volumes, "concurrent": concurrent }))
}

fn row<'a>(results: &'a Value, label_starts: &str) -> Option<&'a Value> {
    results["rows"]
        .as_array()?
        .iter()
        .find(|r| r["label"].as_str().is_some_and(|l| l.starts_with(label_starts)))
}

/// The table for the book: medians, spread, and ratios to runc and the floor.
fn markdown(results: &Value) -> String {
    let runc = row(results, "runc").and_then(|r| r["median_ms"].as_f64()).unwrap_or(f64::NAN);
    let floor = row(results, "unshare floor (").and_then(|r| r["median_ms"].as_f64()).unwrap_or(f64::NAN);
    let mut out = String::from("| start to exit of /bin/true | median | p10 to p90 | x runc | x unshare |\n|---|---:|---:|---:|---:|\n");
    for r in results["rows"].as_array().into_iter().flatten() {
        let median = r["median_ms"].as_f64().unwrap_or(f64::NAN);
        out += &format!(
            "| {} | {:.1} ms | {:.1} to {:.1} | {:.2} | {:.1} |\n",
            r["label"].as_str().unwrap_or("?"),
            median,
            r["p10_ms"].as_f64().unwrap_or(f64::NAN),
            r["p90_ms"].as_f64().unwrap_or(f64::NAN),
            median / runc,
            median / floor
        );
    }
    if let Some(vm) = results["vm_boot_ms"].as_f64() {
        out += &format!("| a VM: Debian kernel + initramfs to a shell command, under qemu | {vm:.0} ms | | {:.1} | {:.0} |\n", vm / runc, vm / floor);
    }
    out += &format!(
        "\n{} runs each after two warm-up runs, all in one run of `cargo xtask bench`.\n",
        results["reps"]
    );
    let scaling = &results["scaling"];
    if !scaling.is_null() {
        out += "\n| step 08, --net none | median | p10 to p90 |\n|---|---:|---:|\n";
        for r in scaling["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(scaling["volumes"].as_array().into_iter().flatten())
        {
            out += &format!(
                "| {} | {:.1} ms | {:.1} to {:.1} |\n",
                r["label"].as_str().unwrap_or("?"),
                r["median_ms"].as_f64().unwrap_or(0.0),
                r["p10_ms"].as_f64().unwrap_or(0.0),
                r["p90_ms"].as_f64().unwrap_or(0.0)
            );
        }
        out += "\n| containers started at once (step 08, bridge) | all done and cleaned up | failed | leases left |\n|---:|---:|---:|---:|\n";
        for c in scaling["concurrent"].as_array().into_iter().flatten() {
            out += &format!(
                "| {} | {:.0} ms | {} | {} |\n",
                c["containers"],
                c["all_done_ms"].as_f64().unwrap_or(0.0),
                c["failed"],
                c["leases_left"]
            );
        }
    }
    out
}

/// A horizontal bar chart of the medians, as plain SVG.
fn svg(results: &Value) -> String {
    let rows: Vec<&Value> = results["rows"].as_array().map(|r| r.iter().collect()).unwrap_or_default();
    let max = rows.iter().filter_map(|r| r["median_ms"].as_f64()).fold(1.0, f64::max);
    let (bar_x, width, line) = (300.0, 420.0, 22.0);
    let height = line * rows.len() as f64 + 40.0;
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    out += "<text x=\"10\" y=\"18\" font-weight=\"bold\">Median time from start to exit of /bin/true (ms)</text>\n";
    for (i, r) in rows.iter().enumerate() {
        let y = 30.0 + i as f64 * line;
        let median = r["median_ms"].as_f64().unwrap_or(0.0);
        let color = match r["group"].as_str() {
            Some("runc") => "#d9822b",
            Some("floor") => "#7a7a7a",
            _ => "#2b6cb0",
        };
        let label = r["label"].as_str().unwrap_or("?").replace('&', "&amp;").replace('<', "&lt;");
        out += &format!("<text x=\"10\" y=\"{:.0}\">{label}</text>\n", y + 14.0);
        out += &format!(
            "<rect x=\"{bar_x}\" y=\"{y:.0}\" width=\"{:.1}\" height=\"16\" fill=\"{color}\"/>\n",
            width * median / max
        );
        out += &format!(
            "<text x=\"{:.1}\" y=\"{:.0}\">{median:.1}</text>\n",
            bar_x + width * median / max + 4.0,
            y + 13.0
        );
    }
    out + "</svg>\n"
}
