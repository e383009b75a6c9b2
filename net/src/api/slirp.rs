//! slirp4netns's API socket (`--api-socket`): one JSON request per
//! connection, `{"execute": ..., "arguments": {...}}`, answered with
//! `{"return": {...}}` or `{"error": {"desc": "..."}}`, as podman and
//! rootlesskit expect.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::forward::{ForwardSpec, GuestTarget, Proto};
use crate::stack::StackRef;

const MAX_REQUEST: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards by slirp4netns id.
#[derive(Default)]
pub struct Table {
    next_id: u64,
    entries: BTreeMap<u64, ForwardSpec>,
}

pub fn bind(stack: StackRef, path: &Path) -> io::Result<impl std::future::Future<Output = ()>> {
    crate::sys::remove_stale_socket(path);
    let listener = crate::sys::bind_unix(path)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            UnixListener::from_std(l)
        })
        .map_err(|e| io::Error::new(e.kind(), format!("API socket {}: {e}", path.display())))?;
    crate::sys::owner_only(path)?;
    let table = Rc::new(RefCell::new(Table::default()));
    Ok(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (stack, table) = (stack.clone(), table.clone());
            tokio::task::spawn_local(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, serve(&stack, &table, conn)).await;
            });
        }
    })
}

/// Reads until the request parses as JSON or the client closes its side.
/// Public for the fuzz target, which feeds it a socket pair.
pub async fn serve(stack: &StackRef, table: &Rc<RefCell<Table>>, mut conn: UnixStream) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let request = loop {
        let n = conn.read(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
            break Ok(v);
        }
        if buf.len() > MAX_REQUEST {
            break Err("bad request: too large message");
        }
        if n == 0 {
            break Err("bad request: cannot parse JSON");
        }
    };
    let reply = match request {
        Ok(req) => handle(stack, table, &req),
        Err(desc) => Err(desc.to_string()),
    };
    let body = match reply {
        Ok(ret) => json!({ "return": ret }),
        Err(desc) => json!({ "error": { "desc": desc } }),
    };
    conn.write_all(body.to_string().as_bytes()).await?;
    conn.shutdown().await
}

fn handle(stack: &StackRef, table: &Rc<RefCell<Table>>, req: &Value) -> Result<Value, String> {
    let execute = req
        .get("execute")
        .and_then(Value::as_str)
        .ok_or("bad request: no execute found")?;
    let args = req.get("arguments").cloned().unwrap_or(Value::Null);
    match execute {
        "add_hostfwd" => {
            let bad = |field: &str| format!("bad request: add_hostfwd: bad arguments.{field}");
            let proto = args
                .get("proto")
                .and_then(Value::as_str)
                .and_then(Proto::parse)
                .ok_or_else(|| bad("proto"))?;
            let host_addr: IpAddr = match args.get("host_addr").and_then(Value::as_str) {
                None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(a) => a.parse().map_err(|_| bad("host_addr"))?,
            };
            let port = |field: &str| {
                args.get(field)
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(field))
            };
            let (host_port, guest_port) = (port("host_port")?, port("guest_port")?);
            let guest = match args.get("guest_addr").and_then(Value::as_str) {
                None | Some("") => IpAddr::V4(stack.borrow().cfg.first_guest),
                Some(a) => a.parse().map_err(|_| bad("guest_addr"))?,
            };
            let spec = ForwardSpec {
                proto,
                host: SocketAddr::new(host_addr, host_port),
                guest: GuestTarget::Ip(guest),
                guest_port,
            };
            stack
                .borrow_mut()
                .add_forward(spec.clone())
                .map_err(|e| format!("add_hostfwd: {e}"))?;
            let mut t = table.borrow_mut();
            t.next_id += 1;
            let id = t.next_id;
            t.entries.insert(id, spec);
            Ok(json!({ "id": id }))
        }
        "list_hostfwd" => {
            let entries: Vec<Value> = table
                .borrow()
                .entries
                .iter()
                .map(|(id, s)| {
                    json!({
                        "id": id,
                        "proto": s.proto.as_str(),
                        "host_addr": s.host.ip().to_string(),
                        "host_port": s.host.port(),
                        "guest_addr": s.guest.to_string(),
                        "guest_port": s.guest_port,
                    })
                })
                .collect();
            Ok(json!({ "entries": entries }))
        }
        "remove_hostfwd" => {
            let id = args
                .get("id")
                .and_then(Value::as_u64)
                .ok_or("bad request: remove_hostfwd: bad arguments.id")?;
            let spec = table
                .borrow_mut()
                .entries
                .remove(&id)
                .ok_or_else(|| format!("remove_hostfwd: no such id {id}"))?;
            stack.borrow_mut().remove_forward(spec.proto, spec.host);
            Ok(json!({}))
        }
        other => Err(format!("bad request: unknown execute \"{other}\"")),
    }
}
