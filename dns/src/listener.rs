//! The optional host-side listener (`--dns-listen 127.0.0.1:PORT`), so host
//! tools can resolve `<name>.test` too. UDP and TCP on the same address.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::server::{DnsServer, Step, Transport};

/// Datagrams handled per wake-up before other tasks get a turn.
const BATCH: usize = 64;
/// Most TCP clients served at once; more wait in the accept queue.
const MAX_TCP_CLIENTS: usize = 256;
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Binds both sockets (so errors surface at start-up) and returns the
/// future that serves them.
pub async fn bind(server: Arc<DnsServer>, addr: SocketAddr) -> io::Result<impl std::future::Future<Output = ()>> {
    let udp = Arc::new(
        UdpSocket::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("DNS listener on udp {addr}: {e}")))?,
    );
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("DNS listener on tcp {addr}: {e}")))?;
    Ok(async move {
        tokio::join!(serve_udp(server.clone(), udp), serve_tcp(server, tcp));
    })
}

async fn serve_udp(server: Arc<DnsServer>, socket: Arc<UdpSocket>) {
    let mut batch = crate::batch::Batch::default();
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(crate::batch::BATCH);
    loop {
        if socket.readable().await.is_err() {
            continue;
        }
        // Drain what is queued per wake-up (one readiness round trip per
        // burst, a system call per batch each way), yielding now and then
        // so forwarded queries make progress.
        let mut taken = 0;
        while taken < BATCH {
            let more = match batch.recv(&socket) {
                Ok(more) => more,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    taken += 1;
                    continue;
                }
            };
            for (packet, from) in batch.datagrams() {
                taken += 1;
                match server.answer_now(packet, from.ip(), Transport::Udp) {
                    Step::Reply(reply) => replies.push((reply, from)),
                    Step::Forward(pending) => {
                        let (server, socket) = (server.clone(), socket.clone());
                        tokio::task::spawn_local(async move {
                            let reply = server.finish(pending).await;
                            let _ = socket.send_to(&reply, from).await;
                        });
                    }
                    Step::Drop => {}
                }
            }
            let sent = crate::batch::send(&socket, &replies);
            // What the socket would not take now goes from a task once it
            // is writable.
            for (reply, to) in replies.drain(..).skip(sent) {
                let socket = socket.clone();
                tokio::task::spawn_local(async move {
                    let _ = socket.send_to(&reply, to).await;
                });
            }
            if !more {
                break;
            }
        }
    }
}

async fn serve_tcp(server: Arc<DnsServer>, listener: TcpListener) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let server = server.clone();
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(TCP_IDLE * 6, tcp_session(&server, stream, from)).await;
            drop(permit);
        });
    }
}

/// Length-prefixed messages until the client closes or idles.
async fn tcp_session(server: &DnsServer, mut stream: TcpStream, from: SocketAddr) -> io::Result<()> {
    let mut buf = vec![0u8; 65535];
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return Ok(()),
        };
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(io::Error::other)??;
        let Some(reply) = server.answer(&buf[..len], from.ip(), Transport::Tcp).await else {
            continue;
        };
        let rlen = u16::try_from(reply.len()).map_err(io::Error::other)?;
        stream.write_all(&rlen.to_be_bytes()).await?;
        stream.write_all(&reply).await?;
    }
}
