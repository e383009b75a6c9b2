//! Ethernet frames from a guest, through the whole switch and NAT
//! (`Stack::ingress`): ARP, IPv4, IPv6, NDP, DHCP, DHCPv6, DNS, TCP, UDP,
//! ICMP. Run it inside a network namespace with no routes (bench/fuzz.sh
//! does): a frame that opens a host flow must not reach any real network.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Context, Poll};

use ferry_net::frontend::Frontend;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

/// A front end that drops what the stack sends.
struct Sink;

impl Frontend for Sink {
    fn poll_recv(&self, _cx: &mut Context<'_>, _buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
    fn send(&self, _frame: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn name(&self) -> &str {
        "fuzz"
    }
}

struct Rig {
    net: common::NetRig,
    port: usize,
}

thread_local! {
    // Leaked: a runtime dropped by a thread-local destructor at exit panics.
    static RIG: &'static RefCell<Option<Rig>> = Box::leak(Box::default());
}

fn rig() -> Rig {
    let net = common::net_rig(false);
    let port = net.stack.borrow_mut().add_port(Rc::new(Sink));
    Rig { net, port }
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(rig);
        let Rig {
            net: common::NetRig { runtime, local, stack },
            port,
        } = rig;
        local.block_on(runtime, async {
            let mut st = stack.borrow_mut();
            let n = data.len().min(st.switch.rx.buf.len());
            st.switch.rx.buf[..n].copy_from_slice(&data[..n]);
            st.ingress(*port, n);
            st.poll();
        });
    });
});
