//! Forwards a query to the upstream resolvers: UDP first, the same upstream
//! over TCP when the answer comes back truncated, the next upstream on
//! error or timeout, and a bounded total time so callers can answer
//! SERVFAIL quickly when nothing upstream works.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream resolver is configured.
    #[error("no upstream DNS resolver configured")]
    NoUpstream,
    /// Every upstream failed or timed out.
    #[error("no upstream answered: {0}")]
    Failed(String),
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    /// Per upstream and transport attempt.
    timeout: Duration,
    ids: RandomState,
    /// Connected UDP sockets per upstream, made on first use: a fresh socket
    /// per query (bind, connect, register, close) capped uncached lookups.
    pools: RefCell<HashMap<SocketAddr, Rc<Pool>>>,
}

/// Sockets per upstream; each query also gets a random id.
const POOL_SOCKETS: usize = 8;

type Waiter = (Vec<hickory_proto::op::Query>, oneshot::Sender<io::Result<Message>>);

struct PooledSocket {
    socket: UdpSocket,
    pending: RefCell<HashMap<u16, Waiter>>,
}

struct Pool {
    sockets: Vec<Rc<PooledSocket>>,
    next: Cell<usize>,
}

impl Pool {
    async fn open(upstream: SocketAddr) -> io::Result<Pool> {
        let mut sockets = Vec::with_capacity(POOL_SOCKETS);
        for _ in 0..POOL_SOCKETS {
            let socket = UdpSocket::bind(bind_for(upstream)).await?;
            socket.connect(upstream).await?;
            let pooled = Rc::new(PooledSocket {
                socket,
                pending: RefCell::new(HashMap::new()),
            });
            tokio::task::spawn_local(read_replies(pooled.clone()));
            sockets.push(pooled);
        }
        Ok(Pool {
            sockets,
            next: Cell::new(0),
        })
    }

    fn pick(&self) -> Rc<PooledSocket> {
        let i = self.next.get();
        self.next.set((i + 1) % self.sockets.len());
        self.sockets[i].clone()
    }
}

/// Hands each reply to the query waiting for its id and question. An ICMP
/// error from the upstream fails every query waiting on this socket at once,
/// so callers answer SERVFAIL without waiting out the timeout.
async fn read_replies(pooled: Rc<PooledSocket>) {
    let mut buf = [0u8; 2 * crate::server::MAX_UDP as usize];
    loop {
        match pooled.socket.recv(&mut buf).await {
            Ok(n) => {
                let Ok(resp) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut pending = pooled.pending.borrow_mut();
                let matches = pending
                    .get(&resp.id())
                    .is_some_and(|(q, _)| q.as_slice() == resp.queries());
                if matches {
                    if let Some((_, tx)) = pending.remove(&resp.id()) {
                        let _ = tx.send(Ok(resp));
                    }
                }
            }
            Err(e) => {
                for (_, (_, tx)) in pooled.pending.borrow_mut().drain() {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }
}

/// Forgets a query's waiter when the query ends (answered, timed out, dropped).
struct Waiting<'a>(&'a PooledSocket, u16);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.borrow_mut().remove(&self.1);
    }
}

fn random_id(state: &RandomState) -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (state.hash_one(nanos) & 0xffff) as u16
}

/// Whether `resp` answers `query` (same id and question).
fn matches(query: &Message, resp: &Message) -> bool {
    resp.id() == query.id() && resp.queries() == query.queries()
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder {
            upstreams,
            timeout,
            ids: RandomState::new(),
            pools: RefCell::new(HashMap::new()),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// One UDP exchange on a pooled socket, with a fresh random id.
    async fn udp(&self, upstream: SocketAddr, query: &Message) -> io::Result<Message> {
        let existing = self.pools.borrow().get(&upstream).cloned();
        let pool = match existing {
            Some(p) => p,
            None => {
                let p = Rc::new(Pool::open(upstream).await?);
                self.pools.borrow_mut().entry(upstream).or_insert(p).clone()
            }
        };
        let pooled = pool.pick();
        let mut q = query.clone();
        let id = loop {
            let id = random_id(&self.ids);
            if !pooled.pending.borrow().contains_key(&id) {
                break id;
            }
        };
        q.set_id(id);
        let bytes = q.to_vec().map_err(io::Error::other)?;
        let (tx, rx) = oneshot::channel();
        pooled.pending.borrow_mut().insert(id, (q.queries().to_vec(), tx));
        let _waiting = Waiting(&pooled, id);
        pooled.socket.send(&bytes).await?;
        let mut resp = rx.await.map_err(|_| io::Error::other("upstream reader stopped"))??;
        resp.set_id(query.id());
        Ok(resp)
    }

    /// Resolves `query` upstream; the returned message carries `query`'s id.
    pub async fn forward(&self, query: &Message) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut q = query.clone();
        q.set_id(random_id(&self.ids));
        let bytes = q.to_vec().map_err(|e| ForwardError::Failed(e.to_string()))?;
        let mut errors = Vec::new();
        for upstream in &self.upstreams {
            let attempt = match tokio::time::timeout(self.timeout, self.udp(*upstream, &q)).await {
                Ok(Ok(resp)) if resp.truncated() => tokio::time::timeout(self.timeout, tcp(*upstream, &bytes, &q))
                    .await
                    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "TCP retry timed out"))),
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            };
            match attempt {
                Ok(mut resp) => {
                    resp.set_id(query.id());
                    return Ok(resp);
                }
                Err(e) => errors.push(format!("{upstream}: {e}")),
            }
        }
        Err(ForwardError::Failed(errors.join("; ")))
    }
}

fn bind_for(upstream: SocketAddr) -> SocketAddr {
    let ip = if upstream.ip().is_loopback() {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    SocketAddr::from((ip, 0))
}

async fn tcp(upstream: SocketAddr, bytes: &[u8], query: &Message) -> io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len()).map_err(io::Error::other)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let resp = Message::from_vec(&buf).map_err(io::Error::other)?;
    if !matches(query, &resp) {
        return Err(io::Error::other("upstream answered a different question"));
    }
    Ok(resp)
}
