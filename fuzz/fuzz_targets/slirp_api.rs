//! Requests on the slirp4netns drop-in's API socket (`--api-socket`, the
//! JSON podman and rootlesskit send: add_hostfwd, list_hostfwd,
//! remove_hostfwd): each input is one connection's bytes.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::rc::Rc;

use ferry_net::api::slirp::{serve, Table};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rig {
    net: common::NetRig,
    table: Rc<RefCell<Table>>,
}

thread_local! {
    // Leaked: a runtime dropped by a thread-local destructor at exit panics.
    static RIG: &'static RefCell<Option<Rig>> = Box::leak(Box::default());
}

fn rig() -> Rig {
    Rig {
        net: common::net_rig(true),
        table: Rc::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(rig);
        rig.net.local.block_on(&rig.net.runtime, async {
            let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
            let (stack, table) = (rig.net.stack.clone(), rig.table.clone());
            let serve = tokio::task::spawn_local(async move { serve(&stack, &table, server).await });
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut reply = Vec::new();
            let _ = client.read_to_end(&mut reply).await;
            let _ = serve.await;
        });
    });
});
