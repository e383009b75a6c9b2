//! `/init tool ...`: the few file operations busybox lacks, for checking
//! a share from inside the guest (xattrs, writes through mmap).

use std::fs::OpenOptions;
use std::io;

use crate::sys;

const USAGE: &str = "usage: /init tool xattr-set PATH NAME VALUE | xattr-get PATH NAME | \
mmap-write PATH OFFSET TEXT | mmap-read PATH OFFSET LEN";

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
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, USAGE)),
    }
}
