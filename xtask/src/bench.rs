//! The `bench` task: how long a container takes, from start to exit of
//! `/bin/true`, next to runc, the kernel's floor (`unshare`) and a VM.
//!
//! Absolute times drift on a shared machine, so everything is measured in one
//! run and compared as ratios. The containers are measured by a worker that xtask
//! starts as root inside a scratch network namespace: the bridge runs never
//! touch the machine's own interfaces. The VM is booted by xtask itself, as the
//! invoking user, like the VM tier boots it (see vm/bench.rs). `--only GROUP`
//! measures some rows (`--only vm` needs no root and runs no container).

use crate::{artifacts, as_root, cargo, display_path, rootfs, run as run_cmd, setup, target_dir, which};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The groups of rows, for `--only`, in the order they appear.
pub const GROUPS: &[&str] = &["floor", "steps", "runc", "vm", "scaling", "pull"];

/// The groups the worker measures (as root, in its scratch network namespace);
/// the VM is booted by xtask itself, as the invoking user, like the VM tier does.
const WORKER_GROUPS: &[&str] = &["floor", "steps", "runc", "scaling", "pull"];

const RUNC_LABEL: &str = "runc (same rootfs, no network)";

/// Measured runs per row (after the warm-up runs).
fn reps(quick: bool) -> usize {
    if quick {
        3
    } else {
        25
    }
}

/// `cargo xtask bench [--quick] [--publish]`: every row.
pub fn run(quick: bool, publish: bool) -> Result<()> {
    run_only(quick, publish, &[])
}

/// `cargo xtask bench [--quick] [--publish] [--only GROUP,...]`: the rows of these
/// groups (all of them when `only` is empty).
pub fn run_only(quick: bool, publish: bool, only: &[String]) -> Result<()> {
    if let Some(unknown) = only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        bail!("--only {unknown}: no such group; the groups are {}", GROUPS.join(", "));
    }
    if publish && !only.is_empty() {
        bail!("--publish puts the whole table in the book: run it without --only");
    }
    if quick && !only.is_empty() && only.iter().all(|g| g == "scaling") {
        bail!("--quick makes no scaling runs: run --only scaling without --quick");
    }
    let wanted = |group: &str| only.is_empty() || only.iter().any(|g| g == group);
    let selected: Vec<&str> = GROUPS.iter().copied().filter(|g| wanted(g)).collect();
    let worker_groups: Vec<&str> = WORKER_GROUPS.iter().copied().filter(|g| wanted(g)).collect();

    // A fresh machine: install what the chosen rows need, as `cargo xtask setup` does
    // (through sudo, which the worker needs anyway). Not fatal: the rootfs says
    // clearly that it needs busybox, and runc and the VM become rows that say why
    // they were not measured.
    let mut packages = Vec::new();
    if !worker_groups.is_empty() {
        packages.extend(["busybox-static", "iproute2"]);
    }
    if wanted("runc") {
        packages.push("runc");
    }
    if wanted("vm") {
        packages.extend(["busybox-static", "qemu-system-x86"]);
    }
    if wanted("pull") {
        packages.extend(["skopeo", "docker-registry"]);
    }
    if let Err(err) = setup::install(&packages, "the benchmark measures them") {
        println!("bench: {err:#}");
    }

    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    // A partial run does not overwrite the last whole table.
    let out_dir =
        if only.is_empty() { dir.clone() } else { dir.join(format!("only-{}", selected.join("-"))) };
    std::fs::create_dir_all(&out_dir)?;

    let mut results = if worker_groups.is_empty() {
        json!({ "rows": [], "scaling": null })
    } else {
        run_worker(&dir, quick, &worker_groups)?
    };
    results["reps"] = json!(reps(quick));
    results["quick"] = json!(quick);
    if !only.is_empty() {
        results["only"] = json!(selected);
    }
    if wanted("vm") {
        let row = vm_row(&dir.join("vm"), quick);
        results["rows"].as_array_mut().context("the worker wrote no rows")?.push(row);
    }

    let out = out_dir.join("results.json");
    // Through a new file: an older results.json may be root's (the worker wrote it).
    let tmp = out_dir.join("results.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&results)?)?;
    std::fs::rename(&tmp, &out)?;
    let table = markdown(&results);
    std::fs::write(out_dir.join("bench.md"), &table)?;
    std::fs::write(out_dir.join("bench-intro.md"), intro_markdown(&results))?;
    std::fs::write(out_dir.join("bench.svg"), svg(&results))?;
    println!("\n{table}");
    println!("written: {}, bench.md, bench-intro.md, bench.svg", display_path(&out));
    if publish {
        let generated = crate::workspace_root().join("book/src/generated");
        for name in ["bench.md", "bench-intro.md", "bench.svg"] {
            std::fs::copy(out_dir.join(name), generated.join(name))?;
        }
        println!("published to {}", display_path(&generated));
    }
    let rows = results["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !rows.iter().any(|r| r["median_ms"].is_number()) {
        bail!("nothing could be measured (the table says why)");
    }
    Ok(())
}

/// The worker's rows: builds what they run, then starts the worker as root in a
/// scratch network namespace and reads what it wrote.
fn run_worker(dir: &Path, quick: bool, groups: &[&str]) -> Result<Value> {
    if groups.iter().any(|g| ["steps", "scaling", "pull"].contains(g)) {
        // Release builds: the numbers should be the runtime's, not the debug build's.
        let steps = artifacts::steps()?;
        let mut build = cargo();
        build.args(["build", "--release", "--bins"]);
        for step in &steps {
            build.arg("-p").arg(format!("step-{}", step.name));
        }
        run_cmd(&mut build)?;
        // And the newest step's debug build: what the book tells learners to run.
        if let Some(newest) = steps.last() {
            run_cmd(cargo().args(["build", "--bins", "-p"]).arg(format!("step-{}", newest.name)))?;
        }
    }
    if groups.contains(&"floor") {
        build_floor(dir)?;
    }
    let probe = artifacts::build_probe()?;
    let rootfs = rootfs::prepare(&probe)?;
    // Without runc its row says so; the bundle needs `runc spec`.
    let bundle = match groups.contains(&"runc") && which("runc").is_some() {
        true => Some(runc_bundle(dir, &rootfs)?),
        false => None,
    };

    let out = dir.join("worker.json");
    let _ = std::fs::remove_file(&out);
    // The worker is this program; a copy, as a later cargo build may replace target/debug/xtask.
    let me = dir.join("xtask-worker");
    std::fs::copy("/proc/self/exe", &me).context("copy xtask for the worker")?;
    let mut worker = Command::new("unshare");
    worker.args(["--net", "--"]).arg(me).arg("bench-worker").arg("--out").arg(&out);
    worker.arg("--rootfs").arg(&rootfs);
    worker.arg("--bin-dir").arg(target_dir().join("release"));
    worker.arg("--only").arg(groups.join(","));
    if let Some(bundle) = &bundle {
        worker.arg("--bundle").arg(bundle);
    }
    if quick {
        worker.arg("--quick");
    }
    run_cmd(&mut as_root(worker)?)?;
    let text = std::fs::read_to_string(&out).with_context(|| format!("read {}", display_path(&out)))?;
    Ok(serde_json::from_str(&text)?)
}

/// The VM row: the VM tier's kernel booted to `/bin/true` and powered off, under
/// qemu (see vm/bench.rs). One boot with --quick, else 5 boots, with no warm-up.
///
/// When it cannot be measured (no qemu, the kernel cannot be prepared for want of apt
/// or of the Debian mirror, a boot fails), the row says why and the bench goes on.
/// The VM tier would fail in those cases too, and in `cargo xtask test` it does, for
/// that same reason: failing the bench as well would report it twice and throw away
/// the container rows, which are what the bench is for. The VM is a yardstick here,
/// not something under test.
fn vm_row(work: &Path, quick: bool) -> Value {
    let label = |accel: &str| format!("VM: boot, {}, power off{accel}", crate::vm::bench::COMMAND);
    // A boot under software emulation takes seconds: a few tell the spread well enough.
    let (warmups, boots) = if quick { (0, 1) } else { (0, 5) };
    match crate::vm::bench::boot_to_true(work, warmups, boots) {
        Ok(m) => {
            let mut row = summary(&label(&format!(" ({})", m.accel)), "vm", &m.times_ms);
            row["warmups"] = json!(m.warmups);
            row["kernel"] = json!(m.kernel);
            row["accel"] = json!(m.accel);
            row["accel_why"] = json!(m.accel_why);
            row["console"] = json!(display_path(&m.log));
            row
        }
        Err(err) => {
            println!("bench: vm: not measured: {err:#}");
            not_measured(&label(""), "vm", &format!("{err:#}"))
        }
    }
}

/// The floor program (xtask/floor/floor.c), built with the C compiler into
/// `dir`, where the worker finds it. Without a compiler its rows say so.
fn build_floor(dir: &Path) -> Result<()> {
    let out = dir.join(FLOOR_PROGRAM);
    let _ = std::fs::remove_file(&out);
    let Some(cc) = which("cc").or_else(|| which("gcc")) else { return Ok(()) };
    let source = crate::workspace_root().join("xtask/floor/floor.c");
    run_cmd(Command::new(cc).args(["-O2", "-Wall", "-o"]).arg(&out).arg(source))
}

/// The floor program's name in the bench's directory.
const FLOOR_PROGRAM: &str = "floor";

/// The floor's levels of kernel work: the argument, and the row's label.
const FLOOR_LEVELS: [(&str, &str); 3] = [
    ("1", "floor: namespaces (uts,pid,mnt,net,ipc)"),
    ("2", "floor: + overlay root, pivot_root, /proc"),
    ("3", "floor: + cgroup"),
];

/// The row whose median the tables divide by: the floor with all of the
/// kernel work of a step without network (or `unshare`, without a C compiler).
fn floor_median(results: &Value) -> Option<f64> {
    let median = |r: &Value| r["median_ms"].as_f64();
    row(results, FLOOR_LEVELS[2].1)
        .and_then(median)
        .or_else(|| row(results, "unshare floor (").and_then(median))
}

/// An OCI bundle for runc: the workshop rootfs, running /bin/true, with
/// runc's default namespaces (pid, ipc, uts, mount, network without interfaces).
fn runc_bundle(dir: &Path, rootfs: &Path) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    if bundle.join("config.json").exists() {
        return Ok(bundle);
    }
    let runc = which("runc").context("no runc: sudo apt-get install runc")?;
    let _ = std::fs::remove_dir_all(&bundle); // half made, by an earlier run that failed
    std::fs::create_dir_all(&bundle)?;
    run_cmd(Command::new("cp").arg("-a").arg(rootfs).arg(bundle.join("rootfs")))?;
    run_cmd(Command::new(runc).arg("spec").current_dir(&bundle)).context("runc spec")?;
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
    /// runc's bundle; None when runc is not installed (its row says so).
    pub bundle: Option<PathBuf>,
    pub rootfs: PathBuf,
    pub bin_dir: PathBuf,
    pub quick: bool,
    /// The groups to measure (of WORKER_GROUPS); empty: all of them.
    pub only: Vec<String>,
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
    let wanted = |group: &str| w.only.is_empty() || w.only.iter().any(|g| g == group);
    let reps = reps(w.quick);
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
    let floor = w.out.parent().unwrap_or(Path::new(".")).join(FLOOR_PROGRAM);
    for (level, label) in FLOOR_LEVELS {
        if floor.is_file() {
            let argv = vec![floor.to_string_lossy().into_owned(), level.into(), rootfs.clone()];
            configs.push(Config { label: label.into(), group: "floor", argv });
        }
    }
    let newest = artifacts::steps()?.len() as u32;
    for step in 1..=newest {
        if !wanted("steps") {
            break;
        }
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

    // The book runs target/debug/NN-name: its start time beside the release build's.
    if let Some(newest) =
        configs.iter().rev().find(|c| c.group == "steps" && c.label.ends_with(" --net none"))
    {
        let release = PathBuf::from(&newest.argv[0]);
        let debug = w
            .bin_dir
            .parent()
            .unwrap_or(&w.bin_dir)
            .join("debug")
            .join(release.file_name().unwrap_or_default());
        if debug.is_file() {
            let mut argv = newest.argv.clone();
            argv[0] = debug.to_string_lossy().into_owned();
            let label = format!("{} (debug build)", newest.label);
            configs.push(Config { label, group: "steps", argv });
        }
    }
    configs.retain(|config| wanted(config.group));

    let mut rows = Vec::new();
    for config in &configs {
        let times = measure(&config.argv, reps)?;
        rows.push(summary(&config.label, config.group, &times));
    }
    if wanted("runc") {
        match (&w.bundle, which("runc")) {
            (Some(bundle), Some(runc)) => {
                // A fresh container id per run.
                let mut runc_times = Vec::new();
                for id in 0..reps + 2 {
                    let argv = vec![
                        runc.to_string_lossy().into_owned(),
                        "run".into(),
                        "--bundle".into(),
                        bundle.to_string_lossy().into_owned(),
                        format!("workshop-bench-{}-{id}", std::process::id()),
                    ];
                    runc_times.push(time_once(&argv)?);
                }
                runc_times.drain(..2); // warm-up
                rows.push(summary(RUNC_LABEL, "runc", &runc_times));
            }
            _ => rows.push(not_measured(
                RUNC_LABEL,
                "runc",
                "runc is not installed: `sudo apt-get install runc` (or `sudo cargo xtask setup`)",
            )),
        }
    }

    if wanted("pull") {
        rows.extend(pull_rows(&w, reps)?);
    }

    let scaling = if w.quick || !wanted("scaling") { json!(null) } else { scaling(&w)? };
    let results = json!({ "reps": reps, "rows": rows, "scaling": scaling });
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

/// A row that could not be measured, and why (the table shows it in place of the numbers).
fn not_measured(label: &str, group: &str, why: &str) -> Value {
    json!({
        "label": label, "group": group, "n": 0,
        "median_ms": null, "p10_ms": null, "p90_ms": null, "not_measured": why,
    })
}

fn summary(label: &str, group: &str, times: &[f64]) -> Value {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "label": label, "group": group, "n": sorted.len(),
        "median_ms": percentile(&sorted, 0.5), "p10_ms": percentile(&sorted, 0.1), "p90_ms": percentile(&sorted, 0.9),
    })
}

const PULL_LABEL: &str = "10-registry pull -q";
const SKOPEO_LABEL: &str = "skopeo copy docker:// oci: (as nobody, through setpriv)";

/// The pull rows: step 10's `pull` of the harness's example image (the workshop
/// rootfs as one gzipped layer) from Debian's docker-registry on this namespace's
/// loopback, beside `skopeo copy` of the same image from the same registry into
/// an OCI layout. skopeo fetches and checks the blobs but unpacks nothing, where
/// `pull` also gunzips and unpacks the layer: the ratio favours skopeo.
fn pull_rows(w: &Worker, reps: usize) -> Result<Vec<Value>> {
    let bin = w.bin_dir.join("10-registry");
    if !bin.exists() {
        return Ok(Vec::new());
    }
    let registry = match harness::registry::Registry::start() {
        Ok(registry) => registry,
        Err(err) => {
            let why = format!("no registry: {err:#}");
            return Ok(vec![
                not_measured(PULL_LABEL, "pull", &why),
                not_measured(SKOPEO_LABEL, "pull", &why),
            ]);
        }
    };
    let images = harness::images::TestImages::get(&w.rootfs)?;
    images.push(&registry, harness::images::EXAMPLE)?;
    let reference =
        format!("{}/{}:latest", registry.host(), harness::images::TestImages::repo(harness::images::EXAMPLE));
    let bin = bin.to_string_lossy().into_owned();
    // Each pull starts from an empty store: the image is removed (untimed) after it.
    let mut pulls = Vec::new();
    for _ in 0..reps + 2 {
        pulls.push(time_once(&words(&format!("{bin} pull -q {reference}")))?);
        time_once(&words(&format!("{bin} image rm {reference}")))?;
    }
    pulls.drain(..2);
    // skopeo as root would keep a cache in /var/lib/containers; as nobody it writes only its output.
    let scratch = std::env::temp_dir().join(format!("workshop-bench-skopeo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    std::fs::set_permissions(&scratch, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let mut copies = Vec::new();
    for n in 0..reps + 2 {
        let out = scratch.join(n.to_string());
        let argv = words(&format!(
            "setpriv --reuid 65534 --regid 65534 --clear-groups env HOME={home} skopeo --insecure-policy copy --quiet \
             --src-tls-verify=false docker://{reference} oci:{out}:latest",
            home = scratch.display(),
            out = out.display()
        ));
        let timed = time_once(&argv);
        let _ = std::fs::remove_dir_all(&out);
        copies.push(timed?);
    }
    copies.drain(..2);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(vec![summary(PULL_LABEL, "pull", &pulls), summary(SKOPEO_LABEL, "pull", &copies)])
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
        let leftovers = std::fs::read_dir(crate::paths::LEASES).map(|d| d.count()).unwrap_or(0);
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

/// Milliseconds for the table: one decimal below a second, none above.
fn ms(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// `value / base` with `decimals`, or a dash when there is no base (not measured).
fn ratio(value: f64, base: Option<f64>, decimals: usize) -> String {
    match base {
        Some(base) if base > 0.0 => format!("{:.decimals$}", value / base),
        _ => "–".to_string(),
    }
}

/// Text for a table cell: no line breaks, no column separators.
fn cell(text: &str) -> String {
    text.replace('\n', " ").replace('|', "\\|")
}

/// The header of both tables. runc's default container is more work than ours
/// (see `UNEQUAL_WORK`): the column says so.
const TABLE_HEADER: &str = "| start to exit of /bin/true | median | p10 to p90 | x runc (runc does more) | x floor |\n|---|---:|---:|---:|---:|\n";

/// Why "x runc" compares unequal work, under the whole table.
const UNEQUAL_WORK: &str = "runc does more work than the workshop's runtime: its default spec sets \
    no_new_privs, masks and makes read-only parts of /proc and /sys, keeps fewer capabilities, \
    sets up a devices cgroup, and runc re-executes itself from a memfd copy of its binary. \
    So \"x runc\" compares unequal work.";

/// The label of a row in the tables: a VM under software emulation says so.
fn table_label(r: &Value) -> String {
    let label = r["label"].as_str().unwrap_or("?");
    match (r["group"].as_str(), r["accel"].as_str()) {
        (Some("vm"), Some("TCG")) => {
            cell(&label.replace("(TCG)", "(TCG: software emulation, roughly 10x slower than KVM)"))
        }
        _ => cell(label),
    }
}

/// One row of a table, with its ratios to runc's and the floor's medians.
fn table_row(r: &Value, runc: Option<f64>, floor: Option<f64>) -> String {
    let label = table_label(r);
    let Some(m) = r["median_ms"].as_f64() else {
        let why = r["not_measured"].as_str().unwrap_or("no result");
        return format!("| {label} | not measured: {} | – | – | – |\n", cell(why));
    };
    format!(
        "| {label} | {} ms | {} to {} | {} | {} |\n",
        ms(m),
        ms(r["p10_ms"].as_f64().unwrap_or(f64::NAN)),
        ms(r["p90_ms"].as_f64().unwrap_or(f64::NAN)),
        ratio(m, runc, 2),
        ratio(m, floor, 1)
    )
}

/// The introduction's four rows: the floor, the newest step without network,
/// runc and the VM (the performance page has the whole table).
fn intro_markdown(results: &Value) -> String {
    let median = |r: &Value| r["median_ms"].as_f64();
    let runc = row(results, "runc").and_then(median);
    let floor = floor_median(results);
    let rows: Vec<&Value> = results["rows"].as_array().map(|r| r.iter().collect()).unwrap_or_default();
    let newest_step = rows
        .iter()
        .rev()
        .find(|r| r["group"] == "steps" && r["label"].as_str().is_some_and(|l| l.ends_with("--net none")));
    let wanted = [
        row(results, FLOOR_LEVELS[2].1).or_else(|| row(results, "unshare floor (")),
        newest_step.copied(),
        row(results, "runc"),
        rows.iter().find(|r| r["group"] == "vm").copied(),
    ];
    let mut out = String::from(TABLE_HEADER);
    for r in wanted.into_iter().flatten() {
        out += &table_row(r, runc, floor);
    }
    out
}

/// The table for the book: medians, spread, and ratios to runc and the floor.
fn markdown(results: &Value) -> String {
    let median = |r: &Value| r["median_ms"].as_f64();
    let runc = row(results, "runc").and_then(median);
    let floor = floor_median(results);
    let rows: Vec<&Value> = results["rows"].as_array().map(|r| r.iter().collect()).unwrap_or_default();
    let mut out = String::from(TABLE_HEADER);
    for r in rows.iter().filter(|r| r["group"] != "pull") {
        out += &table_row(r, runc, floor);
    }
    let mut notes = Vec::new();
    if runc.is_some() {
        notes.push(UNEQUAL_WORK.to_string());
    }
    if rows.iter().any(|r| r["group"] != "vm") {
        notes.push(format!(
            "{} runs each after two warm-up runs, all in one run of `cargo xtask bench{}`.",
            results["reps"],
            if results["quick"] == true { " --quick" } else { "" }
        ));
    }
    if let Some(vm) = rows.iter().find(|r| r["group"] == "vm" && median(r).is_some()) {
        let accel = vm["accel"].as_str().unwrap_or("?");
        notes.push(format!(
            "The VM: {}{}, timed from qemu's start to its exit, of Debian's kernel {} with an \
             initramfs of a static busybox whose /init runs /bin/true and powers off, under qemu \
             with {accel}. Why {accel}: {}.",
            match vm["n"].as_u64().unwrap_or(0) {
                1 => "1 boot".to_string(),
                n => format!("{n} boots, each"),
            },
            match vm["warmups"].as_u64().unwrap_or(0) {
                0 => String::new(),
                1 => " after one warm-up boot".to_string(),
                n => format!(" after {n} warm-up boots"),
            },
            vm["kernel"].as_str().unwrap_or("?"),
            vm["accel_why"].as_str().unwrap_or("?")
        ));
    }
    if !notes.is_empty() {
        out += &format!("\n{}\n", notes.join(" "));
    }
    if let Some(only) = results["only"].as_array() {
        let groups: Vec<&str> = only.iter().filter_map(Value::as_str).collect();
        out += &format!("\nOnly these rows were measured: {} (`--only`).\n", groups.join(", "));
    }
    let pulls: Vec<&&Value> = rows.iter().filter(|r| r["group"] == "pull").collect();
    if !pulls.is_empty() {
        let skopeo = row(results, "skopeo").and_then(median);
        out += "\n| pull of the example image (the workshop rootfs as one gzipped layer) from docker-registry on loopback | median | p10 to p90 | x skopeo |\n|---|---:|---:|---:|\n";
        for r in pulls {
            out += &match median(r) {
                Some(m) => format!(
                    "| {} | {} ms | {} to {} | {} |\n",
                    cell(r["label"].as_str().unwrap_or("?")),
                    ms(m),
                    ms(r["p10_ms"].as_f64().unwrap_or(f64::NAN)),
                    ms(r["p90_ms"].as_f64().unwrap_or(f64::NAN)),
                    ratio(m, skopeo, 2)
                ),
                None => format!(
                    "| {} | not measured: {} | – | – |\n",
                    cell(r["label"].as_str().unwrap_or("?")),
                    cell(r["not_measured"].as_str().unwrap_or("?"))
                ),
            };
        }
        out += "\nskopeo fetches and checks the blobs and writes them as they are; `pull` also gunzips the layer, checks its diff_id and unpacks it into the store, so the ratio favours skopeo.\n";
    }
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
                "| {} | {} ms | {} to {} |\n",
                r["label"].as_str().unwrap_or("?"),
                ms(r["median_ms"].as_f64().unwrap_or(f64::NAN)),
                ms(r["p10_ms"].as_f64().unwrap_or(f64::NAN)),
                ms(r["p90_ms"].as_f64().unwrap_or(f64::NAN))
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

/// A horizontal bar chart of the medians, as plain SVG. When the rows span more
/// than two orders of magnitude (a VM next to containers) the axis is logarithmic:
/// on a linear one every container would be a bar too short to see.
fn svg(results: &Value) -> String {
    // Start times only: the pull rows have a table of their own.
    let rows: Vec<&Value> = results["rows"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["group"] != "pull").collect())
        .unwrap_or_default();
    let medians: Vec<f64> =
        rows.iter().filter_map(|r| r["median_ms"].as_f64()).filter(|m| *m > 0.0).collect();
    let max = medians.iter().copied().fold(1.0, f64::max);
    let min = medians.iter().copied().fold(max, f64::min);
    let log = max / min > 100.0;
    // A log axis from the decade below half the smallest median to the decade above
    // the largest: every bar is visible, and the decades are the grid lines.
    let (lo, hi) = ((min / 2.0).log10().floor(), max.log10().ceil());
    let (bar_x, width, line) = (300.0, 420.0, 22.0);
    let length = |median: f64| match log {
        true => width * ((median.log10() - lo) / (hi - lo)).max(0.0),
        false => width * median / max,
    };
    let top = 30.0;
    let bottom = top + line * rows.len() as f64;
    let height = bottom + if log { 30.0 } else { 10.0 };
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    let scale = if log { ", logarithmic scale" } else { "" };
    out += &format!("<text x=\"10\" y=\"18\" font-weight=\"bold\">Median time from start to exit of /bin/true (ms{scale})</text>\n");
    if log {
        for decade in lo as i32..=hi as i32 {
            let value = 10f64.powi(decade);
            let x = bar_x + length(value);
            out += &format!(
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#dddddd\"/>\n"
            );
            let text = if decade < 0 { format!("{value}") } else { format!("{value:.0}") };
            out += &format!(
                "<text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555555\">{text}</text>\n",
                bottom + 16.0
            );
        }
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + i as f64 * line;
        let color = match r["group"].as_str() {
            Some("runc") => "#d9822b",
            Some("floor") => "#7a7a7a",
            Some("vm") => "#805ad5",
            _ => "#2b6cb0",
        };
        let label = r["label"].as_str().unwrap_or("?").replace('&', "&amp;").replace('<', "&lt;");
        out += &format!("<text x=\"10\" y=\"{:.0}\">{label}</text>\n", y + 14.0);
        let Some(median) = r["median_ms"].as_f64() else {
            out += &format!(
                "<text x=\"{bar_x}\" y=\"{:.0}\" font-style=\"italic\" fill=\"#555555\">not measured</text>\n",
                y + 13.0
            );
            continue;
        };
        let bar = length(median);
        out += &format!(
            "<rect x=\"{bar_x}\" y=\"{y:.0}\" width=\"{bar:.1}\" height=\"16\" fill=\"{color}\"/>\n"
        );
        out += &format!("<text x=\"{:.1}\" y=\"{:.0}\">{}</text>\n", bar_x + bar + 4.0, y + 13.0, ms(median));
    }
    out + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Value {
        let mut vm = summary("VM: boot, /bin/true, power off (TCG)", "vm", &[4000.0]);
        vm["warmups"] = json!(0);
        vm["kernel"] = json!("6.1.0-56-amd64");
        vm["accel"] = json!("TCG");
        vm["accel_why"] = json!("no /dev/kvm");
        json!({
            "reps": 3, "quick": true, "scaling": null,
            "rows": [
                summary("unshare floor (uts,pid,mnt,net)", "floor", &[2.0, 2.0, 2.0]),
                summary("08-volumes --net none", "steps", &[4.0, 5.0, 6.0]),
                summary(RUNC_LABEL, "runc", &[20.0, 20.0, 20.0]),
                vm,
            ],
        })
    }

    #[test]
    fn the_table_has_ratios_and_the_vm() {
        let table = markdown(&results());
        assert!(table.contains("| 08-volumes --net none | 5.0 ms | 4.0 to 6.0 | 0.25 | 2.5 |\n"), "{table}");
        assert!(
            table.contains(
                "| VM: boot, /bin/true, power off (TCG: software emulation, roughly 10x slower than KVM) | 4000 ms | 4000 to 4000 | 200.00 | 2000.0 |\n"
            ),
            "{table}"
        );
        assert!(table
            .starts_with("| start to exit of /bin/true | median | p10 to p90 | x runc (runc does more) |"));
        assert!(table.contains("So \"x runc\" compares unequal work."), "{table}");
        assert!(table
            .contains("3 runs each after two warm-up runs, all in one run of `cargo xtask bench --quick`."));
        assert!(table.contains(
            "The VM: 1 boot, timed from qemu's start to its exit, of Debian's kernel 6.1.0-56-amd64"
        ));
        assert!(table.ends_with("under qemu with TCG. Why TCG: no /dev/kvm.\n"), "{table}");
    }

    #[test]
    fn the_introduction_has_four_rows() {
        let mut results = results();
        let rows = results["rows"].as_array_mut().unwrap();
        rows.insert(1, summary("07-overlay --net none", "steps", &[3.0]));
        rows.insert(3, summary("08-volumes --net none --userns", "steps", &[7.0]));
        let table = intro_markdown(&results);
        let labels: Vec<&str> =
            table.lines().skip(2).map(|l| l.split(" | ").next().unwrap().trim_start_matches("| ")).collect();
        assert_eq!(
            labels,
            [
                "unshare floor (uts,pid,mnt,net)",
                "08-volumes --net none",
                RUNC_LABEL,
                "VM: boot, /bin/true, power off (TCG: software emulation, roughly 10x slower than KVM)"
            ],
            "{table}"
        );
    }

    #[test]
    fn rows_not_measured_say_why() {
        let mut results = results();
        results["rows"][2] = not_measured(RUNC_LABEL, "runc", "runc is not installed");
        results["rows"][3] = not_measured("VM: boot, /bin/true, power off", "vm", "no apt | no mirror");
        let table = markdown(&results);
        assert!(table.contains(
            "| runc (same rootfs, no network) | not measured: runc is not installed | – | – | – |\n"
        ));
        assert!(table.contains("| 08-volumes --net none | 5.0 ms | 4.0 to 6.0 | – | 2.5 |\n"), "{table}");
        assert!(table.contains("not measured: no apt \\| no mirror |"), "{table}");
        assert!(!table.contains("The VM:"));
        let chart = svg(&results);
        assert_eq!(chart.matches("not measured").count(), 2);
        assert!(!chart.contains("logarithmic"));
    }

    #[test]
    fn a_vm_next_to_containers_makes_the_chart_logarithmic() {
        let chart = svg(&results());
        assert!(chart.contains("logarithmic scale"));
        // Decades from 1 ms (below half the floor's 2 ms) to 10 s.
        assert!(chart.contains(">1</text>") && chart.contains(">10000</text>"), "{chart}");
        assert!(!chart.contains("width=\"0.0\""));
    }
}
