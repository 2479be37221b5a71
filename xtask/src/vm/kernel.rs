//! The VM's kernel: a stock Debian `linux-image-*` package from the package registry.
//!
//! `apt-get download` fetches the .deb into target/vm/debs (once); `dpkg-deb -x`
//! unpacks it into a temporary directory, from which we keep `boot/vmlinuz-*` and
//! the modules the workshop needs (overlay, veth, bridge and what they depend on,
//! decompressed so that busybox `insmod` can load them). The package carries no
//! modules.dep (Debian's postinst runs depmod), so the dependencies come from each
//! module's own `.modinfo` section (`depends=llc,stp`), like depmod reads them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{display_path, is_root, output, run as run_cmd, which};

/// The kernel series the VM tier boots by default: bookworm's own.
pub const SERIES: &str = "6.1";

/// The modules the steps need; built-in ones need nothing loaded.
pub const MODULES: &[&str] = &["overlay", "veth", "bridge"];

/// Bump when what `unpack` keeps changes, so old unpacked kernels get redone.
const FORMAT: u32 = 1;

#[derive(Debug, Clone)]
pub struct Kernel {
    /// "linux-image-6.1.0-56-amd64"
    pub package: String,
    /// `uname -r` of the kernel: "6.1.0-56-amd64"
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Module files (decompressed), in the order to load them.
    pub modules: Vec<PathBuf>,
}

/// The kernel for the VM: `choice` is a package name, a .deb file, or None for the
/// newest `linux-image-6.1.0-N-amd64` that apt knows.
pub fn prepare(cache: &Path, choice: Option<&str>) -> Result<Kernel> {
    prepare_with(cache, choice, MODULES, "")
}

/// Like `prepare`, with other modules to load (`modules`, in any order: the
/// dependencies come first). `flavour` names the set: each set is unpacked into a
/// directory of its own ("" for the default `MODULES`), so guests do not take turns.
pub fn prepare_with(cache: &Path, choice: Option<&str>, modules: &[&str], flavour: &str) -> Result<Kernel> {
    let deb = match choice {
        Some(path) if path.ends_with(".deb") => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("--kernel {}: no such file", path.display());
            }
            path
        }
        Some(package) => download(cache, package)?,
        None => match newest_in_apt()? {
            Some(package) => download(cache, &package)?,
            None => match series_debs(cache).pop() {
                Some((_, deb)) => {
                    println!(
                        "vm: apt knows no {SERIES} kernel package; using the cached {}",
                        display_path(&deb)
                    );
                    deb
                }
                None => bail!(
                    "apt knows no linux-image-{SERIES}.0-N-amd64 package: run `apt-get update` as root, \
                     or pass --kernel PACKAGE (apt-cache search linux-image)"
                ),
            },
        },
    };
    unpack(cache, &deb, modules, flavour)
}

/// What `doctor` says about the kernel: cached, or which package would be downloaded.
pub fn describe(cache: &Path) -> (bool, String) {
    if let Some((package, deb)) = series_debs(cache).pop() {
        return (true, format!("{package} cached ({})", display_path(&deb)));
    }
    match apt_search() {
        Ok(text) => match newest(&text, SERIES) {
            Some(package) => {
                (true, format!("{package} not cached yet; vm-test downloads it (apt-get download)"))
            }
            None => (false, format!("no linux-image-{SERIES}.0-N-amd64 in the apt lists: apt-get update")),
        },
        Err(err) => (false, format!("{err:#}")),
    }
}

fn apt_search() -> Result<String> {
    if which("apt-cache").is_none() {
        bail!("no apt-cache: the VM tier takes its kernel from Debian's packages");
    }
    let pattern = format!("^linux-image-{}\\.0-[0-9]+-amd64$", SERIES.replace('.', "\\."));
    output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))
}

/// The newest 6.1 kernel package apt knows; runs `apt-get update` once (as root) when it knows none.
fn newest_in_apt() -> Result<Option<String>> {
    if let Some(package) = newest(&apt_search()?, SERIES) {
        return Ok(Some(package));
    }
    if !is_root() {
        return Ok(None);
    }
    println!("vm: apt knows no {SERIES} kernel package; updating its lists");
    run_cmd(Command::new("apt-get").arg("update"))?;
    Ok(newest(&apt_search()?, SERIES))
}

/// From `apt-cache search` lines ("linux-image-6.1.0-56-amd64 - Linux 6.1 ..."), the
/// plain amd64 flavour (not -cloud, -rt, -unsigned) with the highest ABI number.
pub fn newest(apt_search: &str, series: &str) -> Option<String> {
    let prefix = format!("linux-image-{series}.0-");
    apt_search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let abi = name.strip_prefix(&prefix)?.strip_suffix("-amd64")?;
            Some((abi.parse::<u32>().ok()?, name))
        })
        .max_by_key(|(abi, _)| *abi)
        .map(|(_, name)| name.to_string())
}

/// The .debs in the cache, oldest name first: (package, path).
fn cached_debs(cache: &Path) -> Vec<(String, PathBuf)> {
    let mut debs: Vec<(String, PathBuf)> = fs::read_dir(cache.join("debs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let package = name.strip_suffix(".deb")?.split('_').next()?.to_string();
            package.starts_with("linux-image-").then(|| (package, entry.path()))
        })
        .collect();
    debs.sort_by_key(|(package, _)| abi_number(package));
    debs
}

/// The cached .debs of the default series (`--kernel` may have added others).
fn series_debs(cache: &Path) -> Vec<(String, PathBuf)> {
    cached_debs(cache).into_iter().filter(|(package, _)| newest(package, SERIES).is_some()).collect()
}

fn abi_number(package: &str) -> (String, u32) {
    let base = package.trim_end_matches("-amd64");
    let (series, abi) = base.rsplit_once('-').unwrap_or((base, "0"));
    (series.to_string(), abi.parse().unwrap_or(0))
}

/// `apt-get download PACKAGE` into target/vm/debs, unless a .deb of it is there already.
fn download(cache: &Path, package: &str) -> Result<PathBuf> {
    let debs = cache.join("debs");
    if let Some((_, deb)) = cached_debs(cache).into_iter().find(|(name, _)| name == package) {
        println!("vm: kernel package cached: {}", display_path(&deb));
        return Ok(deb);
    }
    if which("apt-get").is_none() {
        bail!("no apt-get: cannot download {package}; pass --kernel FILE.deb");
    }
    // Into a scratch directory first: a half-downloaded file is never taken for a cached one.
    let partial = cache.join("debs.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    fs::create_dir_all(&debs)?;
    let download = || {
        run_cmd(
            Command::new("apt-get")
                // As root, apt would drop to the _apt user, who cannot write into target/.
                .args(["-o", "APT::Sandbox::User=root", "download", package])
                .current_dir(&partial),
        )
    };
    if let Err(err) = download() {
        // Stale lists name a version the mirror no longer has: update them once (as root).
        if !is_root() {
            return Err(err.context(format!(
                "could not download {package}; if apt's lists are stale, run `sudo apt-get update`"
            )));
        }
        println!("vm: the download failed; updating apt's lists and trying once more");
        run_cmd(Command::new("apt-get").arg("update"))?;
        download().with_context(|| {
            format!("could not download {package} (is it in `apt-cache search linux-image`?)")
        })?;
    }
    let mut downloaded = None;
    for entry in fs::read_dir(&partial)? {
        let entry = entry?;
        let target = debs.join(entry.file_name());
        fs::rename(entry.path(), &target)?;
        downloaded = Some(target);
    }
    let _ = fs::remove_dir_all(&partial);
    downloaded.with_context(|| format!("apt-get download {package} left no .deb"))
}

/// The kernel and modules from `deb`, unpacked once into target/vm/kernel/<deb name>/.
fn unpack(cache: &Path, deb: &Path, modules: &[&str], flavour: &str) -> Result<Kernel> {
    let name = deb.file_stem().context("the .deb has no name")?.to_string_lossy().into_owned();
    let package = name.split('_').next().unwrap_or(&name).to_string();
    let dir_name = if flavour.is_empty() { name.clone() } else { format!("{name}+{flavour}") };
    let dir = cache.join("kernel").join(&dir_name);
    let stamp_path = dir.join("stamp");
    let wanted = format!("format {FORMAT}\nmodules {}\n", modules.join(" "));
    if let Ok(stamp) = fs::read_to_string(&stamp_path) {
        if let Some(kernel) = stamp.strip_prefix(&wanted).and_then(|rest| from_stamp(&dir, rest)) {
            return Ok(Kernel { package, ..kernel });
        }
    }

    println!("vm: unpacking {}", display_path(deb));
    let scratch = cache.join("kernel").join(format!(".{dir_name}.unpack"));
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&scratch)?;
    let result = unpack_into(deb, &scratch, &dir, &stamp_path, &wanted, modules);
    let _ = fs::remove_dir_all(&scratch);
    let kernel = result?;
    Ok(Kernel { package, ..kernel })
}

fn unpack_into(
    deb: &Path,
    scratch: &Path,
    dir: &Path,
    stamp_path: &Path,
    wanted: &str,
    modules: &[&str],
) -> Result<Kernel> {
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(scratch))?;
    let boot = scratch.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("{} has no boot/", deb.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    let release = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
    let modules_dir = scratch.join("lib/modules").join(&release);

    let index = index_modules(&modules_dir.join("kernel"))?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin.lines().filter_map(module_name).collect();
    let mut depends = |name: &str| -> Result<Vec<String>> {
        let path = index.get(name).with_context(|| format!("no module {name} in {}", deb.display()))?;
        modinfo_depends(&read_module(path)?).with_context(|| format!("read {}", path.display()))
    };
    let wanted_modules: Vec<&str> =
        modules.iter().copied().filter(|m| !builtin.iter().any(|b| b == &canonical(m))).collect();
    let order = load_order(&wanted_modules, &mut depends)?;

    fs::create_dir_all(dir.join("modules"))?;
    fs::copy(&vmlinuz, dir.join("vmlinuz"))?;
    let mut modules = Vec::new();
    for name in &order {
        let target = dir.join("modules").join(format!("{name}.ko"));
        fs::write(&target, read_module(&index[name])?)?;
        modules.push(target);
    }
    // Written last: its presence says the directory is complete.
    fs::write(stamp_path, format!("{wanted}release {release}\nload {}\n", order.join(" ")))?;
    println!(
        "vm: kernel {release}; modules to load: {}",
        if order.is_empty() { "none".into() } else { order.join(" ") }
    );
    Ok(Kernel { package: String::new(), release, vmlinuz: dir.join("vmlinuz"), modules })
}

/// The rest of a stamp ("release R\nload a b\n") back into a Kernel, if its files are there.
fn from_stamp(dir: &Path, rest: &str) -> Option<Kernel> {
    let release = rest.lines().find_map(|l| l.strip_prefix("release "))?.to_string();
    let load = rest.lines().find_map(|l| l.strip_prefix("load"))?;
    let modules: Vec<PathBuf> =
        load.split_whitespace().map(|name| dir.join("modules").join(format!("{name}.ko"))).collect();
    let vmlinuz = dir.join("vmlinuz");
    (vmlinuz.is_file() && modules.iter().all(|m| m.is_file())).then(|| Kernel {
        package: String::new(),
        release,
        vmlinuz,
        modules,
    })
}

/// Module names use '_' and '-' interchangeably; the kernel's own spelling is '_'.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// "kernel/net/bridge/bridge.ko.xz" -> "bridge".
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next().filter(|_| file.contains(".ko"))?;
    Some(canonical(stem))
}

/// Every module file below `dir`, by canonical name.
fn index_modules(dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut index = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if let Some(name) = module_name(&entry.file_name().to_string_lossy()) {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// A module's bytes, decompressed (.ko.xz, .ko.zst, .ko.gz) with the host's tools.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = match () {
        _ if name.ends_with(".ko") => return fs::read(path).with_context(|| format!("read {name}")),
        _ if name.ends_with(".ko.xz") => ("xz", "xz-utils"),
        _ if name.ends_with(".ko.zst") => ("zstd", "zstd"),
        _ if name.ends_with(".ko.gz") => ("gzip", "gzip"),
        _ => bail!("{name}: not a kernel module file"),
    };
    let out = Command::new(tool.0).arg("-dc").arg(path).output().with_context(|| {
        format!("could not run {} to decompress {name} (apt-get install {})", tool.0, tool.1)
    })?;
    if !out.status.success() {
        bail!("{} -dc {name} failed: {}", tool.0, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// The `depends=` list from the `.modinfo` section of a module (a 64-bit
/// little-endian ELF relocatable file): NUL-separated `key=value` strings.
pub fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>> {
    let modinfo = elf_section(elf, ".modinfo")?;
    let depends =
        modinfo.split(|b| *b == 0).filter_map(|entry| entry.strip_prefix(b"depends=")).next().unwrap_or(b"");
    let depends = std::str::from_utf8(depends).context("depends= is not UTF-8")?;
    Ok(depends.split(',').filter(|d| !d.is_empty()).map(canonical).collect())
}

/// The contents of the section called `wanted` in an ELF64 little-endian file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Result<&'a [u8]> {
    let bytes = |at: usize, len: usize| elf.get(at..at + len).context("truncated ELF file");
    let u16_at = |at: usize| -> Result<usize> { Ok(u16::from_le_bytes(bytes(at, 2)?.try_into()?) as usize) };
    let u32_at = |at: usize| -> Result<usize> { Ok(u32::from_le_bytes(bytes(at, 4)?.try_into()?) as usize) };
    let u64_at = |at: usize| -> Result<usize> { Ok(u64::from_le_bytes(bytes(at, 8)?.try_into()?) as usize) };
    if bytes(0, 4)? != b"\x7fELF" || bytes(4, 2)? != [2, 1] {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    // Section header: name (u32), type, flags (u64), addr (u64), offset (u64 at 0x18), size (u64 at 0x20).
    let section = |index: usize| -> Result<(usize, &'a [u8])> {
        let header = shoff + index * shentsize;
        let (offset, size) = (u64_at(header + 0x18)?, u64_at(header + 0x20)?);
        Ok((u32_at(header)?, bytes(offset, size)?))
    };
    let (_, names) = section(shstrndx)?;
    for index in 0..shnum {
        let (name_at, data) = section(index)?;
        let name = names.get(name_at..).context("bad section name")?;
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        if name == wanted.as_bytes() {
            return Ok(data);
        }
    }
    bail!("no {wanted} section")
}

/// The modules to load, dependencies first, each once: `depends(name)` lists what
/// `name` needs. Fails on a dependency cycle (the kernel could not load those either).
pub fn load_order(
    wanted: &[&str],
    depends: &mut dyn FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        depends: &mut dyn FnMut(&str) -> Result<Vec<String>>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<()> {
        if order.iter().any(|done| done == name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("modules depend on each other in a cycle: {} -> {name}", path.join(" -> "));
        }
        path.push(name.to_string());
        for dependency in depends(name)? {
            visit(&dependency, depends, order, path)?;
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(&canonical(name), depends, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_plain_amd64_kernel() {
        let search = "\
linux-image-6.1.0-47-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.1.0-50-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-60-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.12.117+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
";
        assert_eq!(newest(search, "6.1").as_deref(), Some("linux-image-6.1.0-50-amd64"));
        assert_eq!(newest("", "6.1"), None);
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(module_name("kernel/net/bridge/bridge.ko").as_deref(), Some("bridge"));
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko.xz").as_deref(), Some("overlay"));
        assert_eq!(module_name("kernel/drivers/net/nf-nat.ko.zst").as_deref(), Some("nf_nat"));
        assert_eq!(module_name("modules.builtin"), None);
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let deps: HashMap<&str, &[&str]> = HashMap::from([
            ("bridge", &["llc", "stp"][..]),
            ("stp", &["llc"][..]),
            ("llc", &[][..]),
            ("veth", &[][..]),
            ("overlay", &[][..]),
        ]);
        let mut depends = |name: &str| -> Result<Vec<String>> {
            let list = deps.get(name).with_context(|| format!("no module {name}"))?;
            Ok(list.iter().map(|s| s.to_string()).collect())
        };
        let order = load_order(&["overlay", "veth", "bridge"], &mut depends).unwrap();
        assert_eq!(order, ["overlay", "veth", "llc", "stp", "bridge"]);
        assert!(load_order(&["nope"], &mut depends).is_err());
    }

    #[test]
    fn a_dependency_cycle_is_an_error() {
        let mut depends =
            |name: &str| -> Result<Vec<String>> { Ok(vec![if name == "a" { "b" } else { "a" }.to_string()]) };
        let err = load_order(&["a"], &mut depends).unwrap_err();
        assert!(format!("{err}").contains("a -> b -> a"), "{err}");
    }

    /// A minimal ELF64 file with a .shstrtab and a .modinfo section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_at = elf.len();
        elf.extend_from_slice(modinfo);
        let shstrtab_at = elf.len();
        elf.extend_from_slice(shstrtab);
        let shoff = elf.len();
        let mut header = |name: u32, offset: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        header(0, 0, 0); // the null section
        header(1, shstrtab_at, shstrtab.len());
        header(11, modinfo_at, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_depends_from_modinfo() {
        let elf = fake_module(b"license=GPL\0depends=llc,stp\0name=bridge\0vermagic=6.1.0 SMP\0");
        assert_eq!(modinfo_depends(&elf).unwrap(), ["llc", "stp"]);
        let elf = fake_module(b"depends=\0name=veth\0");
        assert!(modinfo_depends(&elf).unwrap().is_empty());
        let elf = fake_module(b"name=nf-nat-x\0depends=nf-conntrack\0");
        assert_eq!(modinfo_depends(&elf).unwrap(), ["nf_conntrack"]);
        assert!(modinfo_depends(b"not an elf file").is_err());
        assert!(modinfo_depends(&elf[..100]).is_err());
    }
}
