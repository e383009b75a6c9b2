//! The control API: HTTP/1.1 + JSON on a unix socket (mode 0600).
//!
//!   GET    /health                   {"status":"ok"}
//!   GET    /stats                    data-path and DNS counters
//!   GET    /leases                   DHCP leases
//!   GET    /dns/records              registered names
//!   POST   /dns/records              {"name":"web","ip":"10.0.2.9"}
//!   DELETE /dns/records/NAME         remove NAME from every zone
//!
//! Errors are `{"error": "..."}` with a 4xx status; a bad request never
//! affects the daemon.

mod http;

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::UnixListener;

use crate::stack::StackRef;
use http::{error, HttpError, Request};

/// A client that does not finish its request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `path` (replacing a stale socket) and returns the serving loop.
pub fn bind(stack: StackRef, path: &Path) -> io::Result<impl std::future::Future<Output = ()>> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("API socket {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let stack = stack.clone();
            tokio::task::spawn_local(async move {
                let (read, write) = conn.into_split();
                let request = tokio::time::timeout(REQUEST_TIMEOUT, http::read_request(read)).await;
                let (status, body) = match request {
                    Ok(Ok(req)) => match handle(&stack, &req) {
                        Ok((status, value)) => (status, value.to_string()),
                        Err(e) => (e.status, json!({ "error": e.message }).to_string()),
                    },
                    Ok(Err(e)) => (e.status, json!({ "error": e.message }).to_string()),
                    Err(_) => (408, json!({ "error": "request timed out" }).to_string()),
                };
                let _ = http::write_response(write, status, &body).await;
            });
        }
    })
}

fn parse_json(req: &Request) -> Result<Value, HttpError> {
    serde_json::from_slice(&req.body).map_err(|e| error(400, format!("malformed JSON: {e}")))
}

fn handle(stack: &StackRef, req: &Request) -> Result<(u16, Value), HttpError> {
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("GET", "/health") => Ok((200, json!({ "status": "ok" }))),
        ("GET", "/stats") => {
            let st = stack.borrow();
            let mut stats = serde_json::Map::new();
            let mut add = |text: String| {
                let words: Vec<&str> = text.split_whitespace().collect();
                for pair in words.chunks(2) {
                    if let [k, v] = pair {
                        stats.insert(k.to_string(), json!(v.parse::<u64>().unwrap_or(0)));
                    }
                }
            };
            add(st.metrics.render());
            if let Some(dns) = &st.dns {
                add(dns.metrics.render());
            }
            stats.insert("tcp_flows_active".into(), json!(st.tcp.active()));
            stats.insert("udp_flows_active".into(), json!(st.udp.active()));
            Ok((200, Value::Object(stats)))
        }
        ("GET", "/leases") => {
            let st = stack.borrow();
            let now = Instant::now();
            let leases: Vec<Value> = st
                .dhcp
                .leases()
                .map(|l| {
                    json!({
                        "mac": l.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                        "ip": l.ip.to_string(),
                        "hostname": l.hostname,
                        "expires_in": l.expires.saturating_duration_since(now).as_secs(),
                    })
                })
                .collect();
            Ok((200, Value::Array(leases)))
        }
        ("GET", "/dns/records") => {
            let dns = dns_of(stack)?;
            let records: Vec<Value> = dns
                .records()
                .list()
                .into_iter()
                .map(|(n, ip)| json!({ "name": n, "ip": ip.to_string() }))
                .collect();
            Ok((200, Value::Array(records)))
        }
        ("POST", "/dns/records") => {
            let dns = dns_of(stack)?;
            let body = parse_json(req)?;
            let name = body
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| error(400, "missing string field \"name\""))?;
            let ip: Ipv4Addr = body
                .get("ip")
                .and_then(Value::as_str)
                .ok_or_else(|| error(400, "missing string field \"ip\""))?
                .parse()
                .map_err(|_| error(400, "\"ip\" is not an IPv4 address"))?;
            dns.records()
                .register(name, ip, ferry_dns::Owner::Static(format!("api:{name}")))
                .map_err(|e| error(400, e))?;
            let zones = dns.records().zones().to_vec();
            let names: Vec<String> = zones
                .iter()
                .map(|z| format!("{}.{z}", name.to_ascii_lowercase()))
                .collect();
            Ok((201, json!({ "names": names, "ip": ip.to_string() })))
        }
        ("DELETE", p) if p.starts_with("/dns/records/") => {
            let dns = dns_of(stack)?;
            let name = &p["/dns/records/".len()..];
            let removed = dns.records().unregister(name);
            match removed {
                0 => Err(error(404, format!("no record named {name:?}"))),
                n => Ok((200, json!({ "removed": n }))),
            }
        }
        (_, "/health" | "/stats" | "/leases" | "/dns/records") => {
            Err(error(405, format!("{} not allowed on {path}", req.method)))
        }
        _ => Err(error(404, format!("no such endpoint {path}"))),
    }
}

fn dns_of(stack: &StackRef) -> Result<std::sync::Arc<ferry_dns::DnsServer>, HttpError> {
    stack
        .borrow()
        .dns
        .clone()
        .ok_or_else(|| error(409, "DNS is disabled (--no-dns)"))
}
