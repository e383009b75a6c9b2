//! TCP NAT. A guest SYN starts a non-blocking host `connect()`; the SYN is
//! held, and only when the host accepts is a smoltcp socket created and the
//! SYN replayed into it, so the guest sees SYN-ACK exactly when the host
//! connection exists. Refused connects get a RST, unreachable ones an ICMP
//! error. Data is then spliced between the smoltcp socket and the host
//! socket without intermediate buffers: each side reads only when the other
//! has room, so a slow reader closes the TCP window on the fast writer.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use smoltcp::socket::tcp;
use smoltcp::wire::{IpListenEndpoint, TcpPacket, TcpSeqNumber, ETHERNET_HEADER_LEN};
use tokio::net::TcpStream;

use crate::config::Mac;
use crate::metrics::NetMetrics;
use crate::shards::{Buffers, FlowHandle};
use crate::stack::{Stack, StackRef, L3};
use crate::wire::{self, Addrs};

/// (guest address, guest port, remote address, remote port)
pub type FlowKey = (IpAddr, u16, IpAddr, u16);

/// System calls of the TCP NAT after start-up (the seccomp allow-list).
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
];

/// A SYN waiting for its host connect.
struct PendingSyn {
    /// The whole frame, up to the end of the IP packet.
    frame: Vec<u8>,
    /// IP header length (IPv6 extension headers included).
    header_len: usize,
}

/// A flow with its gateway socket; once its splice runs, with the host end
/// too, for [`Stack::tcp_write_through`].
struct Flow {
    handle: FlowHandle,
    host: Option<Rc<dyn HostStream>>,
}

impl Flow {
    fn new(handle: FlowHandle) -> Flow {
        Flow { handle, host: None }
    }
}

#[derive(Default)]
pub struct TcpNat {
    pending: HashMap<FlowKey, PendingSyn>,
    flows: HashMap<FlowKey, Flow>,
    /// Closed sockets kept for reuse: a fresh one costs zero-filling both
    /// of its buffers, which dominated short connections.
    spare: Vec<(tcp::Socket<'static>, Buffers)>,
    next_port: u16,
    limit_logged: bool,
}

/// Most closed sockets kept for reuse.
const MAX_SPARE: usize = 64;

impl TcpNat {
    pub fn active(&self) -> usize {
        self.flows.len()
    }
}

/// How long a socket may wait for the guest to acknowledge data before the
/// flow is aborted; also bounds FIN-WAIT and LAST-ACK.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Iterations of the splice loop before yielding to other tasks.
const SPLICE_BUDGET: usize = 32;

impl Stack {
    pub fn tcp_flow_exists(&self, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> bool {
        self.tcp.flows.contains_key(&(src, sport, dst, dport))
    }

    /// A SYN for a flow we do not have yet.
    pub fn tcp_syn(&mut self, guest_mac: Mac, frame: &[u8], l3: L3) {
        let ip = &frame[ETHERNET_HEADER_LEN..];
        let Ok(tcp) = TcpPacket::new_checked(&ip[l3.header_len..l3.total]) else {
            return;
        };
        let key: FlowKey = (l3.src, tcp.src_port(), l3.dst, tcp.dst_port());
        if self.tcp.pending.contains_key(&key) {
            // A retransmitted SYN while the host connect is in flight.
            return;
        }
        if self.cfg.dns_addr_for(key.2) == Some(key.2) && key.3 == crate::dns::PORT && self.dns.is_some() {
            self.tcp_local_service(key, frame, l3);
            return;
        }
        if self.cfg.unreachable.contains(&key.2) {
            // slirp4netns's --disable-host-loopback: "Network is unreachable".
            NetMetrics::inc(&self.metrics.drop_no_route);
            let from = self.cfg.gateway_for(key.0).unwrap_or(key.2);
            self.send_unreachable(guest_mac, from, key.0, 0, &ip[..l3.total]);
            return;
        }
        let Some(target) = self.host_target(key.2) else {
            NetMetrics::inc(&self.metrics.drop_no_route);
            self.tcp_reject(guest_mac, key, tcp.seq_number());
            return;
        };
        if self.tcp.flows.len() + self.tcp.pending.len() >= self.cfg.max_tcp_flows {
            NetMetrics::inc(&self.metrics.drop_flow_limit);
            if !std::mem::replace(&mut self.tcp.limit_logged, true) {
                tracing::warn!(
                    limit = self.cfg.max_tcp_flows,
                    "TCP flow table full; refusing new connections (raise --max-tcp-flows)"
                );
            }
            self.tcp_reject(guest_mac, key, tcp.seq_number());
            return;
        }
        self.tcp.pending.insert(
            key,
            PendingSyn {
                frame: frame[..ETHERNET_HEADER_LEN + l3.total].to_vec(),
                header_len: l3.header_len,
            },
        );
        if key.0.is_ipv6() {
            NetMetrics::inc(&self.metrics.tcp6_flows_opened);
        }
        let stack = self.me.clone();
        let timeout = self.cfg.tcp_connect_timeout;
        let addr = SocketAddr::new(target, key.3);
        let outbound = self.cfg.outbound_for(target);
        // The host alias stands for the host's loopback in both families: a
        // service bound to only one of 127.0.0.1 and ::1 (Node's
        // "localhost" is ::1) is reached whichever alias the guest's
        // resolver picked. Refused on one, the other is tried.
        let other_loopback = match target {
            IpAddr::V4(v4) if v4.is_loopback() => Some(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            IpAddr::V6(v6) if v6.is_loopback() => Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            _ => None,
        };
        tokio::task::spawn_local(async move {
            let attempt = |addr: SocketAddr| async move {
                let socket = match addr {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                if let Some(local) = outbound.filter(|_| !addr.ip().is_loopback()) {
                    socket.bind(SocketAddr::new(local, 0))?;
                }
                socket.connect(addr).await
            };
            let connect = async {
                match (attempt(addr).await, other_loopback) {
                    (Err(e), Some(other)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        attempt(SocketAddr::new(other, addr.port())).await.map_err(|_| e)
                    }
                    (result, _) => result,
                }
            };
            let result = match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            };
            if let Some(stack) = stack.upgrade() {
                Stack::tcp_connected(&stack, key, guest_mac, result);
            }
        });
    }

    /// A TCP service of the gateway itself (DNS): accept at once.
    fn tcp_local_service(&mut self, key: FlowKey, frame: &[u8], l3: L3) {
        if self.tcp.flows.len() + self.tcp.pending.len() >= self.cfg.max_tcp_flows {
            NetMetrics::inc(&self.metrics.drop_flow_limit);
            return;
        }
        // Accept from a task: during dispatch the receive buffer the SYN is
        // replayed through is in use.
        self.tcp.pending.insert(
            key,
            PendingSyn {
                frame: frame[..ETHERNET_HEADER_LEN + l3.total].to_vec(),
                header_len: l3.header_len,
            },
        );
        let Some(stack) = self.me.upgrade() else { return };
        tokio::task::spawn_local(async move {
            let handle = {
                let mut st = stack.borrow_mut();
                let Some(pending) = st.tcp.pending.remove(&key) else {
                    return;
                };
                match st.tcp_accept(key, &pending.frame, 16 * 1024) {
                    Some(handle) => handle,
                    None => return,
                }
            };
            crate::dns::tcp_session(&stack, handle, key.0).await;
            stack.borrow_mut().tcp_release(key, handle);
        });
    }

    /// Whether a gateway-side port is used by a TCP flow (port forwards
    /// originate from the gateway).
    pub fn tcp_port_in_use(&self, port: u16) -> bool {
        self.tcp
            .flows
            .keys()
            .any(|k| self.cfg.is_gateway_addr(k.2) && k.3 == port)
    }

    /// Opens a TCP connection to a guest for a port forward: from the
    /// client's own address and port as the guest should see it
    /// ([`crate::config::NetConfig::forward_source_for`]), or from the
    /// gateway and a port of ours (no client, `--forward-source=gateway`,
    /// or that address and port already in a flow to this guest port).
    pub fn tcp_connect_to_guest(
        &mut self,
        guest: IpAddr,
        port: u16,
        client: Option<SocketAddr>,
    ) -> Option<(FlowKey, FlowHandle)> {
        let seen = client
            .and_then(|c| Some((self.cfg.forward_source_for(c.ip(), guest)?, c.port())))
            .filter(|&(ip, p)| p != 0 && !self.tcp.flows.contains_key(&(guest, port, ip, p)));
        let (local_ip, local_port) = match seen {
            Some(s) => s,
            None => (self.cfg.gateway_for(guest)?, self.ephemeral_port_for_tcp()),
        };
        let gateway = local_ip;
        let (mut socket, buffers) = self.new_tcp_socket(self.cfg.tcp_buffer)?;
        let remote = (smoltcp::wire::IpAddress::from(guest), port);
        let local = (smoltcp::wire::IpAddress::from(gateway), local_port);
        let key = (guest, port, gateway, local_port);
        let shard = self.shards.shard_of(&key);
        if let Err(e) = socket.connect(self.shards.context(shard), remote, local) {
            tracing::debug!(error = %e, "connect to guest failed");
            return None;
        }
        let handle = self.shards.add(shard, socket, buffers);
        self.tcp.flows.insert(key, Flow::new(handle));
        NetMetrics::inc(&self.metrics.tcp_flows_opened);
        self.poll();
        self.timer.notify_one();
        Some((key, handle))
    }

    fn ephemeral_port_for_tcp(&mut self) -> u16 {
        self.tcp.next_port = if self.tcp.next_port < 49152 {
            49152
        } else {
            self.tcp.next_port.wrapping_add(1).max(49152)
        };
        while self.tcp_port_in_use(self.tcp.next_port) {
            self.tcp.next_port = self.tcp.next_port.wrapping_add(1).max(49152);
        }
        self.tcp.next_port
    }

    /// A socket from the spare pool, or a new one; with where its buffers are.
    fn new_tcp_socket(&mut self, buffer: usize) -> Option<(tcp::Socket<'static>, Buffers)> {
        match self.tcp.spare.iter().position(|(s, _)| s.recv_capacity() == buffer) {
            Some(i) => Some(self.tcp.spare.swap_remove(i)),
            None => {
                let (mut socket, buffers) = match Buffers::socket(buffer) {
                    Ok(made) => made,
                    Err(e) => {
                        tracing::warn!(error = %e, "no memory for a TCP flow's buffers; the flow is refused");
                        return None;
                    }
                };
                // A short delayed ACK lets the ACK ride on the reply in
                // request/response traffic; bulk transfers still ACK every
                // second segment at once.
                socket.set_ack_delay(Some(smoltcp::time::Duration::from_millis(1)));
                socket.set_nagle_enabled(false);
                socket.set_timeout(Some(smoltcp::time::Duration::from_secs(STALL_TIMEOUT.as_secs())));
                Some((socket, buffers))
            }
        }
    }

    /// Creates the smoltcp socket for `key` and replays its SYN into it.
    fn tcp_accept(&mut self, key: FlowKey, syn_frame: &[u8], buffer: usize) -> Option<FlowHandle> {
        let (mut socket, buffers) = self.new_tcp_socket(buffer)?;
        let endpoint = IpListenEndpoint {
            addr: Some(key.2.into()),
            port: key.3,
        };
        socket.listen(endpoint).ok()?;
        let shard = self.shards.shard_of(&key);
        let handle = self.shards.add(shard, socket, buffers);
        self.tcp.flows.insert(key, Flow::new(handle));
        let len = syn_frame.len().min(self.switch.rx.buf.len());
        self.switch.rx.buf[..len].copy_from_slice(&syn_frame[..len]);
        self.switch.rx.pending = Some(ETHERNET_HEADER_LEN..len);
        let now = self.now();
        self.shards.ingress(shard, now, &mut self.switch);
        self.switch.rx.pending = None;
        self.poll();
        self.timer.notify_one();
        Some(handle)
    }

    /// Gives back the buffer pages of flows that moved no data for
    /// [`crate::resend::QUIET`] (once per quiet spell). A flow's rings are
    /// 2 x `tcp_buffer` of address space but only the pages its data
    /// touched are resident; smoltcp's receive ring never rewinds, so a
    /// long-lived flow trickling small messages would otherwise end up with
    /// its whole ring resident.
    pub fn tcp_trim_quiet(&mut self) {
        let now = self.now();
        for (key, flow) in &self.tcp.flows {
            if let Some(no_held_input) = self.switch.tx.resend.quiet(key, now) {
                if self.shards.trim(flow.handle, no_held_input) {
                    NetMetrics::inc(&self.metrics.tcp_buffers_trimmed);
                }
            }
        }
    }

    /// Writes what the frame just handed to smoltcp brought for a spliced
    /// flow to its host socket now, before the port drains its other frames
    /// and before the flow's splice task runs: in request/response traffic
    /// the request reaches the host one task switch and one stack poll
    /// sooner. What the host does not take at once, or an error, is left to
    /// the splice, which smoltcp has woken; the port polls the stack after,
    /// which sends a window update if one is due.
    pub fn tcp_write_through(&mut self) {
        let Some(key) = self.tcp_input.take() else { return };
        let Some(Flow {
            handle,
            host: Some(host),
        }) = self.tcp.flows.get(&key)
        else {
            return;
        };
        let socket = self.shards.socket(*handle);
        if !socket.can_recv() {
            return;
        }
        if matches!(write_to_host(socket, &**host), Ok(Ok(n)) if n > 0) {
            // The delayed ACK (and window) the timer must learn of.
            self.timer.notify_one();
        }
    }

    /// Forgets a finished flow and keeps its socket for reuse.
    pub(crate) fn tcp_release(&mut self, key: FlowKey, handle: FlowHandle) {
        self.tcp.flows.remove(&key);
        self.switch.tx.resend.forget(&key);
        let (mut socket, buffers) = self.shards.remove(handle);
        if self.tcp.spare.len() < MAX_SPARE {
            if socket.is_open() {
                // Not in the set any more: nothing is sent.
                socket.abort();
            }
            self.tcp.spare.push((socket, buffers));
        }
    }

    fn tcp_reject(&mut self, guest_mac: Mac, key: FlowKey, seq: TcpSeqNumber) {
        let addrs = Addrs {
            src_mac: self.cfg.gateway_mac,
            dst_mac: guest_mac,
            src_ip: key.2,
            dst_ip: key.0,
        };
        if let Some(len) = wire::tcp_rst_for_syn(&mut self.scratch, &addrs, key.3, key.1, seq) {
            self.send_scratch(len);
        }
    }

    fn tcp_connected(stack: &StackRef, key: FlowKey, guest_mac: Mac, result: io::Result<TcpStream>) {
        let mut st = stack.borrow_mut();
        let Some(pending) = st.tcp.pending.remove(&key) else {
            return;
        };
        let host = match result {
            Ok(host) => host,
            Err(e) => {
                st.tcp_connect_failed(guest_mac, key, &pending, &e);
                return;
            }
        };
        let _ = host.set_nodelay(true);
        let size = st.cfg.tcp_buffer;
        let Some(handle) = st.tcp_accept(key, &pending.frame, size) else {
            return;
        };
        NetMetrics::inc(&st.metrics.tcp_flows_opened);
        tracing::debug!(flow = ?key, "tcp flow open");
        let stack = stack.clone();
        tokio::task::spawn_local(async move {
            splice(&stack, key, handle, host).await;
            stack.borrow_mut().tcp_release(key, handle);
            tracing::debug!(flow = ?key, "tcp flow closed");
        });
    }

    fn tcp_connect_failed(&mut self, guest_mac: Mac, key: FlowKey, syn: &PendingSyn, e: &io::Error) {
        tracing::debug!(flow = ?key, error = %e, "tcp connect failed");
        let ip = &syn.frame[ETHERNET_HEADER_LEN.min(syn.frame.len())..];
        let unreachable = matches!(e.raw_os_error(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH));
        if unreachable {
            NetMetrics::inc(&self.metrics.tcp_unreachable);
            let code = if e.raw_os_error() == Some(libc::ENETUNREACH) {
                0
            } else {
                1
            };
            let from = self.cfg.gateway_for(key.0).unwrap_or(key.2);
            self.send_unreachable(guest_mac, from, key.0, code, ip);
            return;
        }
        if e.kind() == io::ErrorKind::ConnectionRefused {
            NetMetrics::inc(&self.metrics.tcp_refused);
        } else {
            NetMetrics::inc(&self.metrics.tcp_unreachable);
        }
        let seq: Option<TcpSeqNumber> = ip
            .get(syn.header_len..)
            .and_then(|t| TcpPacket::new_checked(t).ok().map(|t| t.seq_number()));
        if let Some(seq) = seq {
            self.tcp_reject(guest_mac, key, seq);
        }
    }
}

/// Moves what the guest sent from `socket` to the host as far as the host
/// takes it now (the splice and [`Stack::tcp_write_through`] both write
/// through here).
fn write_to_host(socket: &mut tcp::Socket<'_>, host: &dyn HostStream) -> Result<io::Result<usize>, tcp::RecvError> {
    socket.recv(|buf| match host.try_write(buf) {
        Ok(n) => (n, Ok(n)),
        Err(e) => (0, Err(e)),
    })
}

/// Before the connection exists neither direction can have ended.
fn handshaking(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent
    )
}

/// A host-side error ends the flow: RST to the guest, both directions done.
fn abort_both(socket: &mut tcp::Socket<'_>, to_host: &mut Dir, to_guest: &mut Dir) {
    socket.abort();
    *to_host = Dir::Done;
    *to_guest = Dir::Done;
}

/// What one direction of the splice is doing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Open,
    Done,
}

/// The host end of a spliced flow: a TCP socket to a host service, or one
/// end of a socket pair for a flow ferry itself opened to the guest
/// ([`crate::forward::dial_guest`]). Both are readiness-driven sockets
/// whose shutdown and linger go through `socket2`.
pub(crate) trait HostStream: std::os::fd::AsFd {
    fn poll_read_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>>;
    fn poll_write_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

macro_rules! host_stream {
    ($t:ty) => {
        impl HostStream for $t {
            fn poll_read_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            fn poll_write_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_write_ready(self, cx)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                // A short read drained the socket: drop the readiness now
                // instead of learning it from one more recv failing with
                // EAGAIN (one system call per reply in request/response
                // traffic). tokio clears only if no event came since the
                // readiness was seen, and keeps end-of-stream, so nothing
                // that arrives later is missed.
                let mut short = None;
                let r = <$t>::try_io(self, tokio::io::Interest::READABLE, || {
                    match <$t>::try_read(self, buf) {
                        Ok(n) if n > 0 && n < buf.len() => {
                            short = Some(n);
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                        other => other,
                    }
                });
                match short {
                    Some(n) => Ok(n),
                    None => r,
                }
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
        }
    };
}
host_stream!(TcpStream);
host_stream!(tokio::net::UnixStream);

/// Moves bytes both ways until both directions are finished or either side
/// fails. Returns when the flow can be forgotten.
pub(crate) async fn splice(stack: &StackRef, key: FlowKey, handle: FlowHandle, host: impl HostStream + 'static) {
    let host = Rc::new(host);
    if let Some(flow) = stack.borrow_mut().tcp.flows.get_mut(&key) {
        flow.host = Some(host.clone());
    }
    let mut to_host = Dir::Open; // guest -> host
    let mut to_guest = Dir::Open; // host -> guest
    std::future::poll_fn(|cx| {
        let mut st = stack.borrow_mut();
        let st = &mut *st;
        let mut budget = SPLICE_BUDGET;
        loop {
            // `progressed`: look again; `moved`: bytes or state changed, so
            // the stack has something to send; `timer`: only its timers
            // may have changed.
            let mut progressed = false;
            let mut moved = false;
            let mut timer = false;
            let socket = st.shards.socket(handle);
            let state = socket.state();
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) && !socket.can_recv() {
                // Reset by the guest, timed out, or closed in both directions.
                if state == tcp::State::Closed && (to_host == Dir::Open || to_guest == Dir::Open) {
                    // Tell the host side too: RST if the guest reset us.
                    let _ = socket2::SockRef::from(&host.as_fd()).set_linger(Some(Duration::ZERO));
                }
                return Poll::Ready(());
            }
            if to_host == Dir::Open {
                if socket.can_recv() {
                    match host.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let queued = socket.recv_queue();
                            match write_to_host(socket, &*host) {
                                Ok(Ok(n)) if n > 0 => {
                                    progressed = true;
                                    // The stack has something to send only if
                                    // the freed room is worth a window update
                                    // (smoltcp sends one when the window at
                                    // least doubles); a small request taken
                                    // from a roomy buffer is answered by the
                                    // ACK riding on the reply, and the timer
                                    // still learns of the delayed ACK.
                                    if queued > socket.recv_capacity() / 4 {
                                        moved = true;
                                    } else {
                                        timer = true;
                                    }
                                }
                                // Readiness cleared: look again, to wait for it.
                                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => progressed = true,
                                Ok(Err(_)) | Ok(Ok(_)) | Err(_) => {
                                    abort_both(socket, &mut to_host, &mut to_guest);
                                    progressed = true;
                                    moved = true;
                                }
                            }
                        }
                        Poll::Ready(Err(_)) => {
                            abort_both(socket, &mut to_host, &mut to_guest);
                            moved = true;
                        }
                        Poll::Pending => {}
                    }
                } else if !socket.may_recv() && !handshaking(state) {
                    // The guest sent FIN and we delivered everything.
                    let _ = socket2::SockRef::from(&host.as_fd()).shutdown(std::net::Shutdown::Write);
                    to_host = Dir::Done;
                    progressed = true;
                    moved = true;
                } else {
                    socket.register_recv_waker(cx.waker());
                }
            }
            let socket = st.shards.socket(handle);
            if to_guest == Dir::Open {
                if socket.can_send() {
                    match host.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let r = socket.send(|buf| match host.try_read(buf) {
                                Ok(n) => (n, Ok(n)),
                                Err(e) => (0, Err(e)),
                            });
                            match r {
                                Ok(Ok(0)) => {
                                    // Host EOF: FIN to the guest once the data is out.
                                    socket.close();
                                    to_guest = Dir::Done;
                                    progressed = true;
                                    moved = true;
                                }
                                Ok(Ok(_)) => {
                                    progressed = true;
                                    moved = true;
                                }
                                // Readiness cleared: look again, to wait for it.
                                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => progressed = true,
                                Ok(Err(_)) | Err(_) => {
                                    abort_both(socket, &mut to_host, &mut to_guest);
                                    progressed = true;
                                    moved = true;
                                }
                            }
                        }
                        Poll::Ready(Err(_)) => {
                            abort_both(socket, &mut to_host, &mut to_guest);
                            moved = true;
                        }
                        Poll::Pending => {}
                    }
                } else if !socket.may_send() && !handshaking(socket.state()) {
                    to_guest = Dir::Done;
                    progressed = true;
                    moved = true;
                } else {
                    socket.register_send_waker(cx.waker());
                }
            }
            if moved {
                st.poll();
            }
            if moved || timer {
                st.timer.notify_one();
            }
            if to_host == Dir::Done && to_guest == Dir::Done {
                let socket = st.shards.socket(handle);
                if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                    return Poll::Ready(());
                }
                // Wait for the guest to acknowledge our FIN (bounded by the
                // socket timeout).
                socket.register_send_waker(cx.waker());
                socket.register_recv_waker(cx.waker());
                if !progressed {
                    return Poll::Pending;
                }
            }
            if !progressed {
                return Poll::Pending;
            }
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    })
    .await;
    // The host socket closes when the caller releases the flow, which
    // holds the other reference (`tcp_release`).
}
