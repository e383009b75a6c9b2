//! Requests on ferry's control API (HTTP/1.1 + JSON), which also serves
//! gvproxy's API (`/services/forwarder/*`, `/tunnel`, `/connect`): each
//! input is a byte (bit 0: the endpoint serves `/connect`) and one
//! connection's bytes. Time is paused (tokio's test clock), so
//! requests that wait — a tunnel to a guest that never answers — end at
//! once. Forwards it adds bind ports inside bench/fuzz.sh's network
//! namespace only.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use ferry_net::config::NetConfig;
use ferry_net::metrics::NetMetrics;
use ferry_net::stack::{Stack, StackRef};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rig {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    stack: StackRef,
}

thread_local! {
    // Leaked: a runtime dropped by a thread-local destructor at exit panics.
    static RIG: &'static RefCell<Option<Rig>> = Box::leak(Box::default());
}

fn rig() -> Rig {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let stack = local.block_on(&runtime, async {
        Stack::new(NetConfig::default(), Arc::new(NetMetrics::default()))
    });
    Rig { runtime, local, stack }
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        let rig = r.get_or_insert_with(rig);
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
