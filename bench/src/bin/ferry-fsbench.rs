//! File-system load for bench/fs.sh: the same operations through a
//! vhost-user-fs back end (ferry fs or virtiofsd, driven by ferry-driver's
//! FUSE client, one request at a time as a guest's single thread would)
//! or as native syscalls on the host directory. Prints raw.tsv rows:
//! backend, test, run, value, unit, "".
//!
//! usage: ferry-fsbench BACKEND RUN DIR [SOCKET]
//! DIR is the shared directory (its files are prepared here, on the host);
//! without SOCKET the operations are native syscalls on DIR.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

const STATS: u32 = 20_000;
const OPENS: u32 = 10_000;
const CREATES: u32 = 5_000;
const LISTINGS: u32 = 5;
const DIR_ENTRIES: u32 = 10_000;
const FILE_MB: u64 = 64;

fn prepare(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("file"), b"x")?;
    let many = dir.join("many");
    if !many.join(format!("f{}", DIR_ENTRIES - 1)).exists() {
        std::fs::create_dir_all(&many)?;
        for i in 0..DIR_ENTRIES {
            std::fs::write(many.join(format!("f{i}")), b"")?;
        }
    }
    let big = dir.join("big.bin");
    if std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0) != FILE_MB << 20 {
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut f = std::fs::File::create(&big)?;
        for _ in 0..FILE_MB {
            f.write_all(&chunk)?;
        }
    }
    Ok(())
}

fn per_sec(n: f64, start: Instant) -> f64 {
    n / start.elapsed().as_secs_f64()
}

/// One result row per test, in this order.
const TESTS: [(&str, &str); 8] = [
    ("stat", "ops/s"),
    ("open-close", "ops/s"),
    ("create-unlink", "ops/s"),
    ("readdir-10k", "listings/s"),
    ("read-4k", "MB/s"),
    ("read-1m", "MB/s"),
    ("write-4k", "MB/s"),
    ("write-1m", "MB/s"),
];

fn native(dir: &Path) -> std::io::Result<Vec<f64>> {
    let mut out = Vec::new();
    let file = dir.join("file");
    let t = Instant::now();
    for _ in 0..STATS {
        std::fs::metadata(&file)?;
    }
    out.push(per_sec(STATS.into(), t));
    let t = Instant::now();
    for _ in 0..OPENS {
        drop(std::fs::File::open(&file)?);
    }
    out.push(per_sec(OPENS.into(), t));
    let t = Instant::now();
    for i in 0..CREATES {
        let p = dir.join(format!("c{i}"));
        drop(std::fs::File::create(&p)?);
        std::fs::remove_file(&p)?;
    }
    out.push(per_sec(CREATES.into(), t));
    let t = Instant::now();
    for _ in 0..LISTINGS {
        // READDIRPLUS's native equivalent: names and attributes.
        for e in std::fs::read_dir(dir.join("many"))? {
            e?.metadata()?;
        }
    }
    out.push(per_sec(LISTINGS.into(), t));
    for chunk in [4096usize, 1 << 20] {
        let mut f = std::fs::File::open(dir.join("big.bin"))?;
        let mut buf = vec![0u8; chunk];
        let t = Instant::now();
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        out.push(per_sec(total as f64 / 1e6, t));
    }
    for chunk in [4096usize, 1 << 20] {
        let p = dir.join("written.bin");
        let buf = vec![7u8; chunk];
        let t = Instant::now();
        let mut f = std::fs::File::create(&p)?;
        for _ in 0..(FILE_MB << 20) / chunk as u64 {
            f.write_all(&buf)?;
        }
        drop(f);
        out.push(per_sec((FILE_MB << 20) as f64 / 1e6, t));
        std::fs::remove_file(&p)?;
    }
    Ok(out)
}

fn through_driver(socket: &Path) -> std::io::Result<Vec<f64>> {
    use ferry_driver::fuse::{FuseClient, ROOT};
    let (mut c, _) = FuseClient::connect(socket)?;
    let mut out = Vec::new();
    let step = |what: &'static str| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let file = c.lookup(ROOT, b"file")?;
    let t = Instant::now();
    for _ in 0..STATS {
        c.getattr(file.nodeid)?;
    }
    out.push(per_sec(STATS.into(), t));
    let t = Instant::now();
    for _ in 0..OPENS {
        let fh = c.open(file.nodeid, libc::O_RDONLY)?;
        c.release(file.nodeid, fh)?;
    }
    out.push(per_sec(OPENS.into(), t));
    let t = Instant::now();
    for i in 0..CREATES {
        let name = format!("c{i}");
        let (e, fh) = c.create(ROOT, name.as_bytes(), libc::O_RDWR, 0o644)?;
        c.release(e.nodeid, fh)?;
        c.unlink(ROOT, name.as_bytes())?;
        c.forget(e.nodeid, 1).map_err(step("FORGET"))?;
    }
    out.push(per_sec(CREATES.into(), t));
    let many = c.lookup(ROOT, b"many")?;
    let t = Instant::now();
    for _ in 0..LISTINGS {
        let entries = c.list_dir(many.nodeid).map_err(step("READDIRPLUS"))?;
        if entries.len() < DIR_ENTRIES as usize {
            return Err(std::io::Error::other(format!("listed {} entries", entries.len())));
        }
    }
    out.push(per_sec(LISTINGS.into(), t));
    let big = c.lookup(ROOT, b"big.bin")?;
    for chunk in [4096u32, 1 << 20] {
        let fh = c.open(big.nodeid, libc::O_RDONLY)?;
        let t = Instant::now();
        let mut total = 0u64;
        loop {
            let n = c.read(big.nodeid, fh, total, chunk).map_err(step("READ"))?.len();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        out.push(per_sec(total as f64 / 1e6, t));
        c.release(big.nodeid, fh)?;
    }
    for chunk in [4096usize, 1 << 20] {
        let buf = vec![7u8; chunk];
        let t = Instant::now();
        let (e, fh) = c.create(ROOT, b"written.bin", libc::O_RDWR | libc::O_TRUNC, 0o644)?;
        let mut at = 0u64;
        while at < FILE_MB << 20 {
            at += u64::from(c.write(e.nodeid, fh, at, &buf).map_err(step("WRITE"))?);
        }
        c.release(e.nodeid, fh)?;
        out.push(per_sec((FILE_MB << 20) as f64 / 1e6, t));
        c.unlink(ROOT, b"written.bin")?;
    }
    Ok(out)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, run, dir, rest @ ..] = args.as_slice() else {
        eprintln!("usage: ferry-fsbench BACKEND RUN DIR [SOCKET]");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    if let Err(e) = prepare(&dir) {
        eprintln!("ferry-fsbench: preparing {}: {e}", dir.display());
        std::process::exit(1);
    }
    let result = match rest.first() {
        Some(socket) => through_driver(Path::new(socket)),
        None => native(&dir),
    };
    match result {
        Ok(values) => {
            for ((test, unit), v) in TESTS.iter().zip(values) {
                println!("{backend}\t{test}\t{run}\t{v:.1}\t{unit}\t");
            }
        }
        Err(e) => {
            eprintln!("ferry-fsbench: {backend}: {e}");
            std::process::exit(1);
        }
    }
}
