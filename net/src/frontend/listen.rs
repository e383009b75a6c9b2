//! Listening sockets that turn each accepted connection into a switch port.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use super::stream::{Framing, StreamIo, StreamPort};
use crate::stack::StackRef;

/// Where QEMU stream clients connect: `unix://PATH` or `tcp://IP:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("{s:?}: unix:// needs a path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            return addr
                .parse()
                .map(ListenAddr::Tcp)
                .map_err(|_| format!("{s:?}: expected tcp://IP:PORT"));
        }
        Err(format!("{s:?}: expected unix://PATH or tcp://IP:PORT"))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// What a stream listener speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// QEMU's `-netdev stream`: 4-byte big-endian lengths.
    Qemu,
    /// hyperkit's vpnkit protocol: the handshake, then 2-byte lengths;
    /// `macs` assigns MACs to VM UUIDs.
    Vpnkit {
        mtu: u16,
        macs: std::rc::Rc<[(String, [u8; 6])]>,
    },
}

/// Binds now (so errors reach the caller) and returns the accept loop.
pub async fn qemu_stream(stack: StackRef, addr: ListenAddr) -> io::Result<impl std::future::Future<Output = ()>> {
    stream_listener(stack, addr, StreamKind::Qemu).await
}

/// Binds now (so errors reach the caller) and returns the accept loop.
pub async fn stream_listener(
    stack: StackRef,
    addr: ListenAddr,
    kind: StreamKind,
) -> io::Result<impl std::future::Future<Output = ()>> {
    let prefix = match kind {
        StreamKind::Qemu => "qemu",
        StreamKind::Vpnkit { .. } => "vpnkit",
    };
    let max_frame = stack.borrow().switch.rx.buf.len();
    let listener = match &addr {
        ListenAddr::Unix(path) => {
            // A socket file left by an earlier run is replaced; anything else is not.
            crate::sys::remove_stale_socket(path);
            let l = UnixListener::bind(path)
                .map_err(|e| io::Error::new(e.kind(), format!("listening on {}: {e}", path.display())))?;
            crate::sys::owner_only(path)?;
            Either::Unix(l)
        }
        ListenAddr::Tcp(a) => Either::Tcp(
            TcpListener::bind(a)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("listening on {a}: {e}")))?,
        ),
    };
    Ok(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            match &listener {
                Either::Unix(l) => match l.accept().await {
                    Ok((conn, _)) => attach(&stack, conn, kind.clone(), max_frame, format!("{prefix}:{addr}#{n}")),
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                },
                Either::Tcp(l) => match l.accept().await {
                    Ok((conn, peer)) => {
                        let _ = conn.set_nodelay(true);
                        attach(&stack, conn, kind.clone(), max_frame, format!("{prefix}:{peer}"))
                    }
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                },
            }
        }
    })
}

enum Either {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// How long a vpnkit client may take over its handshake.
const HANDSHAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn attach<S>(stack: &StackRef, conn: S, kind: StreamKind, max_frame: usize, name: String)
where
    S: StreamIo + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let stack = stack.clone();
    tokio::task::spawn_local(async move {
        let mut conn = conn;
        let framing = match kind {
            StreamKind::Qemu => Framing::Qemu,
            StreamKind::Vpnkit { mtu, macs } => {
                match tokio::time::timeout(HANDSHAKE_WAIT, super::vpnkit::handshake(&mut conn, mtu, &macs)).await {
                    Ok(Ok(_mac)) => {}
                    Ok(Err(e)) => return tracing::warn!(port = %name, error = %e, "vpnkit handshake failed"),
                    Err(_) => return tracing::warn!(port = %name, "vpnkit handshake: the client sent nothing for 10 s"),
                }
                Framing::Hyperkit
            }
        };
        let port = StreamPort::with_framing(conn, framing, max_frame, name);
        tokio::task::spawn_local(port.clone().flush_task());
        crate::run_port(stack, port).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!("unix:///run/x.sock".parse(), Ok(ListenAddr::Unix("/run/x.sock".into())));
        assert_eq!(
            "tcp://127.0.0.1:5000".parse(),
            Ok(ListenAddr::Tcp("127.0.0.1:5000".parse().unwrap()))
        );
        assert!("unix://".parse::<ListenAddr>().is_err());
        assert!("udp://x".parse::<ListenAddr>().is_err());
    }
}
