//! Datagrams in bursts for the host listener: on Linux one `recvmmsg` takes
//! up to [`BATCH`] queries and one `sendmmsg` sends their answers, instead
//! of a `recvfrom` and a `sendto` per query (the kernel's per-call cost is
//! most of a cached answer's). Elsewhere the same interface moves one
//! datagram per call.
//!
//! Written here on libc because the maintained wrappers either lack these
//! calls for a tokio socket (socket2, tokio) or bring a QUIC stack with them
//! (quinn-udp); the unsafe code is the two calls and the address
//! conversions around them.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Most datagrams taken or sent per system call.
#[cfg(target_os = "linux")]
pub const BATCH: usize = 32;
#[cfg(not(target_os = "linux"))]
pub const BATCH: usize = 1;

/// Room for one datagram: the largest a UDP socket can deliver, so no query
/// is cut short. The slots are one zeroed allocation; only the pages
/// datagrams touch become resident.
const SLOT: usize = 65536;

/// Receive slots and what the last [`Batch::recv`] put in them.
pub struct Batch {
    bufs: Vec<u8>,
    /// (slot, length, source) per datagram received.
    got: Vec<(usize, usize, SocketAddr)>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            bufs: vec![0u8; BATCH * SLOT],
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl Batch {
    /// The datagrams of the last receive, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got
            .iter()
            .map(|&(slot, len, from)| (&self.bufs[slot * SLOT..slot * SLOT + len], from))
    }

    /// Takes what is queued, up to [`BATCH`] datagrams, without waiting;
    /// true if the batch was full (more may be queued). A batch that is not
    /// full drained the socket, so its readiness is dropped here (tokio
    /// keeps it if anything arrived meanwhile) instead of learning it from
    /// one more call failing with EAGAIN.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<bool> {
        self.got.clear();
        let mut short = false;
        let r = socket.try_io(tokio::io::Interest::READABLE, || {
            let n = sys::recv(socket, &mut self.bufs, &mut self.got)?;
            if n < BATCH {
                short = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        if short {
            Ok(false)
        } else {
            r.map(|()| true)
        }
    }
}

/// Sends `out` from the front, as many per call as the socket takes.
/// Returns how many were sent; stops at the first that would block. One
/// that fails otherwise (an unroutable address) is skipped, as a lone
/// `sendto` failure would be.
pub fn send(socket: &UdpSocket, out: &[(Vec<u8>, SocketAddr)]) -> usize {
    let mut done = 0;
    while done < out.len() {
        match socket.try_io(tokio::io::Interest::WRITABLE, || sys::send(socket, &out[done..])) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => done += 1,
        }
    }
    done
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use super::{BATCH, SLOT};

    fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(ss.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in,
                // which it is large and aligned enough for.
                let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    fn from_socket_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for a
                // sockaddr_in; the pointer is to our own local.
                let sin = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    }

    /// One `recvmmsg`: fills `got` with (length, source) per datagram.
    pub fn recv(
        socket: &impl AsRawFd,
        bufs: &mut [u8],
        got: &mut Vec<(usize, usize, SocketAddr)>,
    ) -> io::Result<usize> {
        // SAFETY: plain old data; all-zero is valid for each (null iovec
        // pointers are replaced below before use).
        let (mut addrs, mut hdrs, mut iovs): (
            [libc::sockaddr_storage; BATCH],
            [libc::mmsghdr; BATCH],
            [libc::iovec; BATCH],
        ) = unsafe { zeroed() };
        for (iov, slot) in iovs.iter_mut().zip(bufs.chunks_exact_mut(SLOT)) {
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = slot.len();
        }
        for ((h, iov), addr) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(addrs.iter_mut()) {
            h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        debug_assert!(bufs.len() >= BATCH * SLOT);
        // SAFETY: every header points at a live SLOT-byte slot of `bufs`
        // and a live entry of `addrs`, all outliving the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (slot, (h, addr)) in hdrs.iter().zip(addrs.iter()).take(n).enumerate() {
            // A datagram from no IP address cannot be answered: skipped.
            if let Some(from) = to_socket_addr(addr) {
                got.push((slot, h.msg_len as usize, from));
            }
        }
        Ok(n)
    }

    /// One `sendmmsg` of up to [`BATCH`] replies; how many went.
    pub fn send(socket: &impl AsRawFd, out: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
        let out = &out[..out.len().min(BATCH)];
        // SAFETY: plain old data; all-zero is valid for each (null iovec
        // pointers are replaced below before use).
        let (mut addrs, mut hdrs, mut iovs): (
            [libc::sockaddr_storage; BATCH],
            [libc::mmsghdr; BATCH],
            [libc::iovec; BATCH],
        ) = unsafe { zeroed() };
        for (((h, iov), addr), (reply, to)) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(addrs.iter_mut()).zip(out) {
            let (ss, len) = from_socket_addr(to);
            *addr = ss;
            iov.iov_base = reply.as_ptr() as *mut libc::c_void;
            iov.iov_len = reply.len();
            h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = len;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `out.len()` headers point at live buffers and
        // addresses that outlive the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                out.len() as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io;
    use std::net::SocketAddr;

    use tokio::net::UdpSocket;

    pub fn recv(socket: &UdpSocket, bufs: &mut [u8], got: &mut Vec<(usize, usize, SocketAddr)>) -> io::Result<usize> {
        let (n, from) = socket.try_recv_from(&mut bufs[..super::SLOT])?;
        got.push((0, n, from));
        Ok(1)
    }

    pub fn send(socket: &UdpSocket, out: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
        let (reply, to) = &out[0];
        socket.try_send_to(reply, *to).map(|_| 1)
    }
}
