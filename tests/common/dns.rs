//! A DNS upstream the tests start on loopback (never the real upstream),
//! and a small client for queries from inside a namespace.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Answers `*.upstream.example` (A 192.0.2.7, TTL from the first label:
/// `ttl3.upstream.example` has TTL 3, default 60) and `big.example`
/// (50 A records: truncated over UDP, whole over TCP). Counts queries.
pub struct Upstream {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn answer(query: &Message, over_tcp: bool) -> Message {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_available(true);
    resp.add_queries(query.queries().to_vec());
    let Some(q) = query.queries().first() else { return resp };
    let name = q.name().to_ascii().to_ascii_lowercase();
    if name.ends_with("upstream.example.") {
        let ttl = name
            .strip_prefix("ttl")
            .and_then(|r| r.split('.').next()?.parse().ok())
            .unwrap_or(60);
        if q.query_type() == RecordType::A {
            resp.add_answer(Record::from_rdata(
                q.name().clone(),
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ));
        }
    } else if name == "big.example." {
        if over_tcp {
            for i in 0..50u8 {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                ));
            }
        } else {
            resp.set_truncated(true);
        }
    } else {
        resp.set_response_code(ResponseCode::NXDomain);
    }
    resp
}

impl Upstream {
    pub fn start() -> Upstream {
        // The same port for UDP and TCP.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (q1, s1) = (queries.clone(), stop.clone());
        let t1 = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s1.load(Ordering::SeqCst) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                q1.fetch_add(1, Ordering::SeqCst);
                let _ = udp.send_to(&answer(&q, false).to_vec().unwrap(), from);
            }
        });
        let (q2, s2) = (queries.clone(), stop.clone());
        let t2 = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut len = [0u8; 2];
                if c.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if c.read_exact(&mut buf).is_err() {
                    continue;
                }
                let Ok(q) = Message::from_vec(&buf) else { continue };
                q2.fetch_add(1, Ordering::SeqCst);
                let out = answer(&q, true).to_vec().unwrap();
                let _ = c.write_all(&(out.len() as u16).to_be_bytes());
                let _ = c.write_all(&out);
            }
        });
        Upstream {
            addr,
            queries,
            stop,
            threads: vec![t1, t2],
        }
    }

    /// Stops answering and closes both sockets.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn query(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new();
    m.set_id(0x4321).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

/// One UDP exchange (call from inside the namespace).
pub fn udp_exchange(server: SocketAddr, msg: &Message) -> std::io::Result<Message> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.send_to(&msg.to_vec().unwrap(), server)?;
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf)?;
    Ok(Message::from_vec(&buf[..n]).expect("parseable reply"))
}

/// One TCP exchange (call from inside the namespace).
pub fn tcp_exchange(server: SocketAddr, msg: &Message) -> std::io::Result<Message> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let bytes = msg.to_vec().unwrap();
    s.write_all(&(bytes.len() as u16).to_be_bytes())?;
    s.write_all(&bytes)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    Ok(Message::from_vec(&buf).expect("parseable reply"))
}

pub fn first_a(m: &Message) -> Option<Ipv4Addr> {
    m.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}
