//! A tap device inside a network namespace, the way pasta and slirp4netns
//! attach to a container: the device is created from a thread that has
//! joined the namespace, and the fd keeps working after the thread leaves.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;

use super::Frontend;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Address set-up done inside the namespace (`--configure`).
#[derive(Clone, Debug)]
pub struct TapAddress {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The link has IPv6: SLAAC from ferry's router advertisement, with
    /// duplicate-address detection off (ferry answers for its own
    /// addresses, so the one-second wait buys nothing), as podman sets it.
    pub ipv6: bool,
    /// The tap's own MAC address (slirp4netns's `--macaddress`).
    pub mac: Option<[u8; 6]>,
}

#[derive(Clone, Debug)]
pub struct TapOptions {
    /// The namespace to create the tap in (`/proc/PID/ns/net`, a bind
    /// mount under /run/netns, ...); None = ferry's own.
    pub netns: Option<PathBuf>,
    pub name: String,
    pub configure: Option<TapAddress>,
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1-15 bytes"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux and the
    // kernel reads the bytes according to sin_family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: RawFd, request: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> io::Result<()> {
    // SAFETY: each caller passes the argument type its request expects,
    // valid for the duration of the call.
    check(unsafe { libc::ioctl(fd, request as _, arg) }, what)
}

fn create_tap(name: &str) -> io::Result<OwnedFd> {
    let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
    // SAFETY: a valid C string and flags.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    check(fd, "opening /dev/net/tun (is the tun module loaded?)")?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    ioctl(
        fd.as_raw_fd(),
        TUNSETIFF,
        (&mut req as *mut libc::ifreq).cast(),
        &format!("creating tap {name}"),
    )?;
    Ok(fd)
}

/// Brings `name` up with an address, MTU and default route (and lo up).
fn configure(name: &str, a: &TapAddress) -> io::Result<()> {
    // SAFETY: plain socket(2) call.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(sock, "socket for interface configuration")?;
    // SAFETY: `sock` was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let fd = sock.as_raw_fd();
    let up = |ifname: &str| -> io::Result<()> {
        let mut req = ifreq(ifname)?;
        ioctl(
            fd,
            libc::SIOCGIFFLAGS as _,
            (&mut req as *mut libc::ifreq).cast(),
            "reading interface flags",
        )?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        ioctl(
            fd,
            libc::SIOCSIFFLAGS as _,
            (&mut req as *mut libc::ifreq).cast(),
            &format!("bringing {ifname} up"),
        )
    };
    up("lo")?;
    if a.ipv6 {
        // /proc/sys/net is this thread's network namespace's.
        let dad = format!("/proc/sys/net/ipv6/conf/{name}/accept_dad");
        std::fs::write(&dad, "0").map_err(|e| io::Error::new(e.kind(), format!("writing {dad}: {e}")))?;
    }
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = i32::try_from(a.mtu).unwrap_or(1500);
    ioctl(
        fd,
        libc::SIOCSIFMTU as _,
        (&mut req as *mut libc::ifreq).cast(),
        &format!("setting MTU {} on {name}", a.mtu),
    )?;
    if let Some(mac) = a.mac {
        let mut req = ifreq(name)?;
        // SAFETY: sockaddr is plain old data; all-zero is valid.
        let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
        hw.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = hw;
        ioctl(
            fd,
            libc::SIOCSIFHWADDR as _,
            (&mut req as *mut libc::ifreq).cast(),
            &format!("setting MAC address on {name}"),
        )?;
    }
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(a.addr);
    ioctl(
        fd,
        libc::SIOCSIFADDR as _,
        (&mut req as *mut libc::ifreq).cast(),
        &format!("setting address {} on {name}", a.addr),
    )?;
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(a.prefix)).unwrap_or(0));
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(
        fd,
        libc::SIOCSIFNETMASK as _,
        (&mut req as *mut libc::ifreq).cast(),
        "setting netmask",
    )?;
    up(name)?;
    // SAFETY: rtentry is plain old data; all-zero is valid.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_in(a.gateway);
    route.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    ioctl(
        fd,
        libc::SIOCADDRT as _,
        (&mut route as *mut libc::rtentry).cast(),
        &format!("adding default route via {}", a.gateway),
    )
}

fn open_in_namespace(opts: &TapOptions) -> io::Result<OwnedFd> {
    if let Some(ns) = &opts.netns {
        let file = File::open(ns)
            .map_err(|e| io::Error::new(e.kind(), format!("opening network namespace {}: {e}", ns.display())))?;
        // SAFETY: setns(2) on a namespace fd we hold; it changes only this
        // (short-lived) thread's network namespace.
        let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        check(ret, &format!("joining network namespace {}", ns.display()))?;
    }
    let fd = create_tap(&opts.name)?;
    if let Some(addr) = &opts.configure {
        configure(&opts.name, addr)?;
    }
    Ok(fd)
}

/// The tap front end.
pub struct Tap {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

impl Tap {
    /// Creates (and optionally configures) the tap. Must be called inside a
    /// tokio runtime.
    pub fn open(opts: &TapOptions) -> io::Result<Tap> {
        let thread_opts = opts.clone();
        let fd = std::thread::spawn(move || open_in_namespace(&thread_opts))
            .join()
            .map_err(|_| io::Error::other("tap set-up thread panicked"))??;
        Ok(Tap {
            fd: crate::sys::async_fd(fd)?,
            name: opts.name.clone(),
        })
    }
}

impl Frontend for Tap {
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let result = guard.try_io(|fd| {
                // SAFETY: reading into a valid, writable buffer of the given length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n.unsigned_abs())
                }
            });
            match result {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: writing from a valid buffer of the given length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Joins the user namespace at `path` (slirp4netns `--userns-path`), so
/// that an unprivileged ferry holds CAP_NET_ADMIN over the namespace's
/// network. Must run before any thread is started: the kernel refuses
/// setns(CLONE_NEWUSER) in a multi-threaded process.
pub fn join_user_namespace(path: &std::path::Path) -> io::Result<()> {
    let file = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening user namespace {}: {e}", path.display())))?;
    // SAFETY: setns(2) on a namespace fd we hold.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWUSER) };
    check(ret, &format!("joining user namespace {}", path.display()))
}
