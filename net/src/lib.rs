//! ferry's userspace network: guest Ethernet frames in, ordinary host
//! sockets out. A switch owns the guest-facing L2; the gateway's IP stack is
//! smoltcp; TCP, UDP and ICMP echo are NATed to host sockets.
//!
//! Everything runs on one thread, as tasks started with `spawn_local`
//! (a tokio `LocalRuntime`, or a `LocalSet`).
#![deny(unsafe_code)]

pub mod api;
pub mod bounded;
pub mod config;
pub mod dhcp;
pub mod dhcp6;
pub mod forward;
pub mod frontend;
pub mod gso;
pub mod listeners;
pub mod metrics;
pub mod ndp;
pub mod pcap;
pub mod resend;
pub mod shards;
pub mod stack;
pub mod state;
pub mod switch;
pub mod sys;
pub mod virtio;
pub mod wire;

mod dns;
mod icmp;
mod tcp;
mod udp;

use std::rc::Rc;
use std::time::Duration;

pub use config::NetConfig;
pub use frontend::Frontend;
pub use metrics::NetMetrics;
pub use stack::{Stack, StackRef};

/// Every system call the NAT makes once running, gathered from the lists
/// beside the code that makes them (for `ferry-confine`'s seccomp filter).
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[&[libc::c_long]] = &[
    tcp::SYSCALLS,
    udp::SYSCALLS,
    forward::SYSCALLS,
    state::SYSCALLS,
    ferry_dns::SYSCALLS,
];

/// Frames read per wake-up of a port before smoltcp sends what they caused.
const RX_BATCH: usize = 64;
/// Upper bound on how late a TCP timer (retransmit, close) may fire.
const TIMER_TICK: Duration = Duration::from_millis(50);

/// Attaches `port` to the stack and moves its frames until it closes.
pub async fn run_port(stack: StackRef, port: Rc<dyn Frontend>) {
    let id = {
        let mut st = stack.borrow_mut();
        let id = st.add_port(port.clone());
        // Guests that asked for a router before we were here hear one now.
        let all = ndp::ALL_NODES;
        st.send_router_advert(ndp::multicast_mac(all), all);
        id
    };
    tracing::debug!(port = port.name(), "front end attached");
    let events = stack.borrow().port_events.clone();
    if let Some(tell) = &events {
        tell(stack::PortEvent::Attached);
    }
    let mut failed = false;
    let noop = std::task::Waker::noop();
    loop {
        let first = std::future::poll_fn(|cx| {
            let mut st = stack.borrow_mut();
            port.poll_recv(cx, &mut st.switch.rx.buf)
        })
        .await;
        match first {
            Ok(0) => break,
            Ok(n) => {
                // A request in that frame goes to the host before anything
                // else: before the port drains the rest and before the
                // stack's poll. Measured in alternating request/response
                // runs, see docs/performance.md (round trips).
                let mut st = stack.borrow_mut();
                st.ingress(id, n);
                st.tcp_write_through();
            }
            Err(e) => {
                NetMetrics::inc(&stack.borrow().metrics.port_errors);
                tracing::warn!(port = port.name(), error = %e, "front end failed; detaching it");
                failed = true;
                break;
            }
        }
        let mut st = stack.borrow_mut();
        // Drain what else is ready, then let smoltcp answer all of it.
        let mut cx = std::task::Context::from_waker(noop);
        for _ in 1..RX_BATCH {
            match port.poll_recv(&mut cx, &mut st.switch.rx.buf) {
                std::task::Poll::Ready(Ok(n)) if n > 0 => st.ingress(id, n),
                _ => break,
            }
        }
        st.poll();
    }
    {
        // The guests behind this port are gone: so are their names.
        let mut st = stack.borrow_mut();
        for mac in st.switch.remove_port(id) {
            st.dns_forget(mac);
        }
    }
    tracing::debug!(port = port.name(), "front end detached");
    if let Some(tell) = &events {
        tell(if failed {
            stack::PortEvent::Failed
        } else {
            stack::PortEvent::Detached
        });
    }
}

/// Drives smoltcp's timers (retransmissions, delayed FINs, timeouts), and
/// once a second lets quiet flows give their buffer pages back.
pub async fn run_timers(stack: StackRef) {
    let notify = stack.borrow().timer.clone();
    let mut trimmed_at = stack.borrow().now();
    loop {
        let delay = {
            let mut st = stack.borrow_mut();
            st.poll();
            let now = st.now();
            if now - trimmed_at >= resend::QUIET {
                trimmed_at = now;
                st.tcp_trim_quiet();
            }
            st.shards.delay(now)
        };
        match delay {
            Some(d) => {
                let d = Duration::from_micros(d.total_micros()).min(TIMER_TICK);
                tokio::time::sleep(d).await;
            }
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
            }
        }
    }
}
