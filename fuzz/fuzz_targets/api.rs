//! Requests on ferry's control API (HTTP/1.1 + JSON), which also serves
//! gvproxy's API (`/services/forwarder/*`, `/tunnel`, `/connect`): each
//! input is a byte (bit 0: the endpoint serves `/connect`) and one
//! connection's bytes. Time is paused (tokio's test clock), so
//! requests that wait — a tunnel to a guest that never answers — end at
//! once. Forwards it adds bind ports inside bench/fuzz.sh's network
//! namespace only.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;

use common::NetRig as Rig;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

thread_local! {
    // Leaked: a runtime dropped by a thread-local destructor at exit panics.
    static RIG: &'static RefCell<Option<Rig>> = Box::leak(Box::default());
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(|| common::net_rig(true));
        // The first byte: whether this endpoint serves /connect.
        let Some((&sel, data)) = data.split_first() else {
            return;
        };
        let framing = (sel & 1 == 1).then_some(ferry_net::frontend::stream::Framing::Qemu);
        rig.local.block_on(&rig.runtime, async {
            let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
            let mut serve = tokio::task::spawn_local(ferry_net::api::serve_conn(rig.stack.clone(), server, framing));
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut reply = Vec::new();
            let wait = std::time::Duration::from_secs(60);
            let _ = tokio::time::timeout(wait, client.read_to_end(&mut reply)).await;
            // The client is gone: the connection must end by itself (a
            // /connect link detaches at EOF); time is paused, so a wait
            // for a guest ends at once.
            drop(client);
            if tokio::time::timeout(wait, &mut serve).await.is_err() {
                serve.abort();
            }
        });
    });
});
