//! `/init tool ...`: the few file operations busybox lacks, for checking
//! a share from inside the guest (xattrs, writes through mmap, an inotify
//! watcher: Debian's busybox has no inotifyd).

use std::fs::OpenOptions;
use std::io;

use crate::sys;

const USAGE: &str = "usage: /init tool xattr-set PATH NAME VALUE | xattr-get PATH NAME | \
mmap-write PATH OFFSET TEXT | mmap-read PATH OFFSET LEN | inotify DIR | udp-echo PORT";

/// Runs one tool command; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    match dispatch(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ferry-init tool: {e}");
            1
        }
    }
}

fn number(s: &str) -> io::Result<usize> {
    s.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} is not a number")))
}

fn dispatch(args: &[String]) -> io::Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["xattr-set", path, name, value] => sys::setxattr(path, name, value.as_bytes()),
        ["xattr-get", path, name] => {
            println!("{}", String::from_utf8_lossy(&sys::getxattr(path, name)?));
            Ok(())
        }
        ["mmap-write", path, offset, text] => {
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let len = file.metadata()?.len() as usize;
            let at = number(offset)?;
            if at + text.len() > len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "write past the end of the file",
                ));
            }
            let mut map = sys::Mapping::new(&file, len, true)?;
            map.bytes_mut()[at..at + text.len()].copy_from_slice(text.as_bytes());
            map.sync()
        }
        ["mmap-read", path, offset, n] => {
            let file = OpenOptions::new().read(true).open(path)?;
            let len = file.metadata()?.len() as usize;
            let (at, n) = (number(offset)?, number(n)?);
            if at + n > len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "read past the end of the file",
                ));
            }
            let map = sys::Mapping::new(&file, len, false)?;
            println!("{}", String::from_utf8_lossy(&map.bytes()[at..at + n]));
            Ok(())
        }
        ["inotify", dir] => watch(dir),
        // A UDP service for checks busybox cannot make (its nc has no -u).
        ["udp-echo", port] => {
            let port: u16 = port
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "udp-echo PORT: not a port"))?;
            let s = std::net::UdpSocket::bind(("0.0.0.0", port))?;
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = s.recv_from(&mut buf)?;
                s.send_to(&buf[..n], from)?;
            }
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, USAGE)),
    }
}

/// Prints one line per inotify event on `dir`: `EVENT[|ISDIR] NAME`.
fn watch(dir: &str) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut fd = sys::inotify_watch(dir)?;
    println!("watching {dir}");
    let names = [
        (libc::IN_CREATE, "CREATE"),
        (libc::IN_MODIFY, "MODIFY"),
        (libc::IN_CLOSE_WRITE, "CLOSE_WRITE"),
        (libc::IN_DELETE, "DELETE"),
        (libc::IN_MOVED_FROM, "MOVED_FROM"),
        (libc::IN_MOVED_TO, "MOVED_TO"),
        (libc::IN_ATTRIB, "ATTRIB"),
        (libc::IN_ISDIR, "ISDIR"),
    ];
    let mut buf = vec![0u8; 64 << 10];
    let mut out = std::io::stdout();
    loop {
        let n = fd.read(&mut buf)?;
        let mut b = &buf[..n];
        while b.len() >= 16 {
            let mask = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
            let len = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]) as usize;
            let name = b.get(16..16 + len).unwrap_or(&[]);
            let name = String::from_utf8_lossy(name.split(|&c| c == 0).next().unwrap_or(&[])).into_owned();
            let what: Vec<&str> = names
                .iter()
                .filter(|(bit, _)| mask & bit != 0)
                .map(|(_, n)| *n)
                .collect();
            writeln!(out, "{} {name}", what.join("|"))?;
            out.flush()?;
            b = b.get(16 + len..).unwrap_or(&[]);
        }
    }
}
