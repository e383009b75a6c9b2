//! Forwards a query to the upstream resolvers: UDP first, the same upstream
//! over TCP when the answer comes back truncated, the next upstream on
//! error or timeout, and a bounded total time so callers can answer
//! SERVFAIL quickly when nothing upstream works.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

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
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
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
            let attempt = match tokio::time::timeout(self.timeout, udp(*upstream, &bytes, &q)).await {
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

async fn udp(upstream: SocketAddr, bytes: &[u8], query: &Message) -> io::Result<Message> {
    let socket = UdpSocket::bind(bind_for(upstream)).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    // Upstream queries advertise MAX_UDP, so answers fit with room to spare.
    let mut buf = [0u8; 2 * crate::server::MAX_UDP as usize];
    // Ignore stray datagrams that do not answer this query (bounded by the
    // caller's timeout).
    loop {
        let n = socket.recv(&mut buf).await?;
        if let Ok(resp) = Message::from_vec(&buf[..n]) {
            if matches(query, &resp) {
                return Ok(resp);
            }
        }
    }
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
