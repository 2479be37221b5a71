//! A writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header ("070701" and 13 eight-digit hex fields),
//! the path and a NUL, padding to 4 bytes, the data, padding to 4 bytes. The
//! archive ends with an entry named "TRAILER!!!". The kernel creates entries in
//! the order it reads them, so a directory must come before what is in it: the
//! writer adds missing parent directories by itself.

use std::collections::HashSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// Owner and modification time of an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    /// Bytes written so far (for the padding).
    offset: u64,
    /// Directories already in the archive ("" is the root, always there).
    dirs: HashSet<String>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out, next_ino: 1, offset: 0, dirs: HashSet::from([String::new()]) }
    }

    /// A directory with `mode` (permission bits, e.g. 0o755); its parents are added (0755, root).
    pub fn dir(&mut self, path: &str, mode: u32, meta: Meta) -> io::Result<()> {
        let path = normalize(path)?;
        if self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.entry(&path, S_IFDIR | (mode & 0o7777), meta, (0, 0), b"")?;
        self.dirs.insert(path);
        Ok(())
    }

    pub fn file(&mut self, path: &str, mode: u32, meta: Meta, data: &[u8]) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | (mode & 0o7777), meta, (0, 0), data)
    }

    /// A symbolic link at `path` pointing to `target` (stored as the entry's data).
    pub fn symlink(&mut self, path: &str, target: &str, meta: Meta) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, meta, (0, 0), target.as_bytes())
    }

    /// A device node (`block` false: character device), like /dev/console (5, 1).
    pub fn device(
        &mut self,
        path: &str,
        block: bool,
        mode: u32,
        rdev: (u32, u32),
        meta: Meta,
    ) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        let kind = if block { S_IFBLK } else { S_IFCHR };
        self.entry(&path, kind | (mode & 0o7777), meta, rdev, b"")
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, Meta::default(), (0, 0), b"")?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            if !self.dirs.contains(&parent) {
                self.entry(&parent, S_IFDIR | 0o755, Meta::default(), (0, 0), b"")?;
                self.dirs.insert(parent.clone());
            }
        }
        Ok(())
    }

    fn entry(&mut self, path: &str, mode: u32, meta: Meta, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: over 4 GiB")))?;
        let nlink = if mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        let ino = self.next_ino;
        if ino != 0 {
            self.next_ino += 1;
        }
        let fields = [
            ino,
            mode,
            meta.uid,
            meta.gid,
            nlink,
            meta.mtime,
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            path.len() as u32 + 1, // namesize, with the NUL
            0,                     // check (only for the "070702" format)
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(path.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - self.offset % 4) % 4;
        self.write(&[0; 3][..padding as usize])
    }
}

/// "/usr/bin/x" and "usr//bin/x/" -> "usr/bin/x"; refuses "..", "." and the root itself.
fn normalize(path: &str) -> io::Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad path in the archive: {path:?}"),
        ));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (path, mode, rdev, data)
    type Read = (String, u32, (u32, u32), Vec<u8>);

    /// A tiny reader for the tests: every entry of the archive.
    fn read(archive: &[u8]) -> Vec<Read> {
        let mut entries = Vec::new();
        let mut at = 0;
        let field = |header: &[u8], i: usize| {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
            u32::from_str_radix(hex, 16).unwrap()
        };
        loop {
            let header = &archive[at..at + 110];
            assert_eq!(&header[..6], b"070701");
            let (mode, size, namesize) =
                (field(header, 1), field(header, 6) as usize, field(header, 11) as usize);
            let rdev = (field(header, 9), field(header, 10));
            let name = std::str::from_utf8(&archive[at + 110..at + 110 + namesize - 1]).unwrap().to_string();
            assert_eq!(archive[at + 110 + namesize - 1], 0, "the name ends with a NUL");
            at = (at + 110 + namesize).next_multiple_of(4);
            let data = archive[at..at + size].to_vec();
            at = (at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(at, archive.len());
                return entries;
            }
            entries.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn writes_entries_parents_first_with_padding() {
        let mut writer = Writer::new(Vec::new());
        let root = Meta::default();
        writer.file("/usr/bin/hello", 0o755, root, b"#!/bin/sh\necho hi\n").unwrap();
        writer.symlink("bin/sh", "busybox", root).unwrap();
        writer.dir("tmp", 0o1777, root).unwrap();
        writer.dir("usr/bin", 0o700, root).unwrap(); // already there: not written twice
        writer.device("dev/console", false, 0o600, (5, 1), root).unwrap();
        let archive = writer.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);

        let entries = read(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["usr", "usr/bin", "usr/bin/hello", "bin", "bin/sh", "tmp", "dev", "dev/console"]);
        let find = |name: &str| entries.iter().find(|e| e.0 == name).unwrap();
        assert_eq!(find("usr/bin/hello").1, 0o100755);
        assert_eq!(find("usr/bin/hello").3, b"#!/bin/sh\necho hi\n");
        assert_eq!(find("bin/sh").1, 0o120777);
        assert_eq!(find("bin/sh").3, b"busybox");
        assert_eq!(find("tmp").1, 0o041777);
        assert_eq!(find("usr").1, 0o040755);
        assert_eq!(find("dev/console").1, 0o020600);
        assert_eq!(find("dev/console").2, (5, 1));
    }

    #[test]
    fn header_layout() {
        let mut writer = Writer::new(Vec::new());
        writer.file("a", 0o644, Meta { uid: 1000, gid: 100, mtime: 0x5f5e_1000 }, b"xyz").unwrap();
        let archive = writer.finish().unwrap();
        let header = std::str::from_utf8(&archive[..110]).unwrap();
        assert_eq!(
            header,
            "070701\
             00000001000081a4000003e80000006400000001\
             5f5e100000000003000000000000000000000000\
             000000000000000200000000"
        );
        // 110 + "a\0" = 112, already aligned; then the data and one byte of padding.
        assert_eq!(&archive[110..116], b"a\0xyz\0");
    }

    #[test]
    fn refuses_paths_that_climb() {
        let mut writer = Writer::new(Vec::new());
        assert!(writer.file("../etc/passwd", 0o644, Meta::default(), b"").is_err());
        assert!(writer.file("/", 0o644, Meta::default(), b"").is_err());
        assert_eq!(normalize("//usr//bin/").unwrap(), "usr/bin");
    }
}
