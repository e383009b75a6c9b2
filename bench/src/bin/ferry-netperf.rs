//! Request/response load for the network benchmark.
//!
//!   ferry-netperf serve ADDR:PORT              echo server (thread per connection)
//!   ferry-netperf rr  ADDR:PORT CONNS SECS     keep-alive request/response
//!   ferry-netperf crr ADDR:PORT CONNS SECS     one TCP connection per request
//!
//! Clients print one line: `rate=<per second> p50_us=<..> p99_us=<..> errors=<n>`.
//! Requests and replies are 64 bytes. Every loop is bounded by SECS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MSG: usize = 64;

fn serve(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        std::thread::spawn(move || {
            let mut buf = [0u8; MSG];
            while conn.read_exact(&mut buf).is_ok() {
                if conn.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
}

fn one_request(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [7u8; MSG];
    conn.write_all(&buf)?;
    conn.read_exact(&mut buf)
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Runs `conns` client threads for `secs`; each returns its latencies (µs).
fn load(addr: SocketAddr, conns: usize, secs: u64, per_request_connect: bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut conn = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let result = if per_request_connect {
                        connect(addr).and_then(|mut c| one_request(&mut c))
                    } else {
                        if conn.is_none() {
                            conn = connect(addr).ok();
                        }
                        match conn.as_mut() {
                            Some(c) => one_request(c),
                            None => Err(std::io::Error::other("connect failed")),
                        }
                    };
                    match result {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => {
                            errors += 1;
                            conn = None;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (lat, e) = t.join().unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "rate={:.0} p50_us={} p99_us={} errors={errors}",
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: ferry-netperf serve ADDR:PORT | rr|crr ADDR:PORT CONNS SECS";
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).expect(usage);
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(addr),
        Some("rr") => load(addr, num(3) as usize, num(4), false),
        Some("crr") => load(addr, num(3) as usize, num(4), true),
        _ => panic!("{usage}"),
    }
}
