//! A deterministic writer for the newc ("070701") cpio format the kernel
//! unpacks as an initramfs: fixed inode numbers, zero mtimes, owner root.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4)) % 4;
        self.put(&[0u8; 3][..usize::try_from(pad).unwrap_or(0)])
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: usize, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| io::Error::other(format!("{name}: too large for cpio")))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| io::Error::other("name too long"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    pub fn add(&mut self, name: &str, entry: &Entry) -> io::Result<()> {
        match entry {
            Entry::Dir { mode } => self.header(name, S_IFDIR | mode, 2, 0, (0, 0)),
            Entry::File { mode, data } => {
                self.header(name, S_IFREG | mode, 1, data.len(), (0, 0))?;
                self.put(data)?;
                self.pad()
            }
            Entry::Symlink { target } => {
                self.header(name, S_IFLNK | 0o777, 1, target.len(), (0, 0))?;
                self.put(target.as_bytes())?;
                self.pad()
            }
            Entry::CharDevice { mode, major, minor } => self.header(name, S_IFCHR | mode, 1, 0, (*major, *minor)),
        }
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_alignment() {
        let mut w = CpioWriter::new(Vec::new());
        w.add(
            "a",
            &Entry::File {
                mode: 0o644,
                data: b"hello".to_vec(),
            },
        )
        .unwrap();
        let out = w.finish().unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // 110-byte header + "a\0" padded to 112, then 5 data bytes padded to 8.
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..117], b"hello");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    /// The real `cpio` tool must list what we wrote.
    #[test]
    fn gnu_cpio_reads_it() {
        if std::process::Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("skipping: cpio is not installed");
            return;
        }
        let mut w = CpioWriter::new(Vec::new());
        w.add("dir", &Entry::Dir { mode: 0o755 }).unwrap();
        w.add(
            "dir/file",
            &Entry::File {
                mode: 0o600,
                data: vec![7; 1001],
            },
        )
        .unwrap();
        w.add("dir/link", &Entry::Symlink { target: "file".into() }).unwrap();
        let archive = w.finish().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("dir/file"), "{listing}");
        assert!(listing.contains("1001"), "{listing}");
        assert!(listing.contains("dir/link -> file"), "{listing}");
    }
}
