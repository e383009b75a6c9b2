//! The control API: HTTP/1.1 + JSON on a unix socket (mode 0600).
//!
//!   GET    /health                   {"status":"ok"}
//!   GET    /stats                    data-path and DNS counters
//!   GET    /leases                   DHCP leases
//!   GET    /dns/records              registered names
//!   POST   /dns/records              {"name":"web","ip":"10.0.2.9"}
//!   DELETE /dns/records/NAME         remove NAME from every zone
//!   GET    /forwards                 port forwards
//!   POST   /forwards                 {"publish":"8080:80/tcp","guest":"web"}
//!   DELETE /forwards/PROTO/IP:PORT   remove a forward
//!   gvproxy's /services/forwarder/expose, /unexpose (POST) and /all (GET)
//!   gvproxy's /tunnel?ip=IP&port=N: "OK", then the connection is a TCP
//!   stream to the guest's IP:N
//!   gvproxy's /connect (only where a framing is given): the connection
//!   becomes a VM link carrying frames
//!
//! Errors are `{"error": "..."}` with a 4xx status; a bad request never
//! affects the daemon.

mod http;
pub mod slirp;

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::UnixListener;

use std::net::SocketAddr;

use crate::forward::{parse_publish, ForwardSpec, GuestTarget, Proto};
use crate::stack::StackRef;
use http::{error, HttpError, Request};

/// A client that does not finish its request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `path` (replacing a stale socket) and returns the serving loop.
pub fn bind(stack: StackRef, path: &Path) -> io::Result<impl std::future::Future<Output = ()>> {
    bind_with(stack, path, None)
}

/// As [`bind`]; `connect` is the framing of gvproxy's `/connect` on this
/// endpoint (None: not served here).
pub fn bind_with(
    stack: StackRef,
    path: &Path,
    connect: Option<crate::frontend::stream::Framing>,
) -> io::Result<impl std::future::Future<Output = ()>> {
    crate::sys::remove_stale_socket(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("API socket {}: {e}", path.display())))?;
    crate::sys::owner_only(path)?;
    Ok(async move {
        loop {
            if let Ok((conn, _)) = listener.accept().await {
                tokio::task::spawn_local(serve_conn(stack.clone(), conn, connect));
            }
        }
    })
}

/// The same API on a TCP address (gvproxy's `-listen tcp://IP:PORT`).
/// Anyone who can reach the address can add forwards: bind it to a
/// loopback address.
pub async fn bind_tcp(
    stack: StackRef,
    addr: SocketAddr,
    connect: Option<crate::frontend::stream::Framing>,
) -> io::Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("API address {addr}: {e}")))?;
    Ok(async move {
        loop {
            if let Ok((conn, _)) = listener.accept().await {
                tokio::task::spawn_local(serve_conn(stack.clone(), conn, connect));
            }
        }
    })
}

/// A connection that can carry the API, or leave HTTP for a guest link.
pub trait ApiStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + crate::frontend::stream::StreamIo + 'static
{
}
impl ApiStream for tokio::net::UnixStream {}
impl ApiStream for tokio::net::TcpStream {}

/// One request on `conn` (the API closes after each answer). Public for
/// the fuzz target, which feeds it a socket pair.
pub async fn serve_conn<S: ApiStream>(stack: StackRef, mut conn: S, connect: Option<crate::frontend::stream::Framing>) {
    let request = tokio::time::timeout(REQUEST_TIMEOUT, http::read_request(&mut conn)).await;
    if let Ok(Ok(req)) = &request {
        if req.path.starts_with("/tunnel") || req.path == "/connect" {
            return leave_http(&stack, req, conn, connect).await;
        }
    }
    let (status, body) = match request {
        Ok(Ok(req)) => match handle(&stack, &req) {
            Ok((status, value)) => (status, value.to_string()),
            Err(e) => (e.status, json!({ "error": e.message }).to_string()),
        },
        Ok(Err(e)) => (e.status, json!({ "error": e.message }).to_string()),
        Err(_) => (408, json!({ "error": "request timed out" }).to_string()),
    };
    let _ = http::write_response(conn, status, &body).await;
}

/// gvproxy's `/tunnel` and `/connect`: the connection stops being HTTP.
async fn leave_http<S: ApiStream>(
    stack: &StackRef,
    req: &Request,
    mut conn: S,
    connect: Option<crate::frontend::stream::Framing>,
) {
    use tokio::io::AsyncWriteExt;
    async fn refuse<S: ApiStream>(conn: S, status: u16, msg: String) {
        let _ = http::write_response(conn, status, &json!({ "error": msg }).to_string()).await;
    }
    if req.path == "/connect" {
        let Some(framing) = connect else {
            return refuse(
                conn,
                404,
                "/connect is served on gvproxy's -listen endpoints only".into(),
            )
            .await;
        };
        let max_frame = stack.borrow().switch.rx.buf.len();
        let port = crate::frontend::stream::StreamPort::with_framing(conn, framing, max_frame, "api:/connect".into());
        port.preload(&req.rest);
        tokio::task::spawn_local(port.clone().flush_task());
        return crate::run_port(stack.clone(), port).await;
    }
    let query = req.path.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let Some(ip) = param("ip") else {
        return refuse(conn, 400, "ip is mandatory".into()).await;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return refuse(conn, 400, format!("ip {ip:?} is not an IP address")).await;
    };
    let Some(port) = param("port").and_then(|p| p.parse::<u16>().ok()) else {
        return refuse(conn, 400, "port must be a number 0-65535".into()).await;
    };
    let guest = match crate::forward::dial_guest(stack, GuestTarget::Ip(ip), port, TUNNEL_WAIT) {
        Ok(g) => g,
        Err(e) => return refuse(conn, 500, format!("cannot dial {ip}:{port}: {e}")).await,
    };
    // As gvproxy: a bare "OK", then the guest's bytes.
    if conn.write_all(b"OK").await.is_err() {
        return;
    }
    let mut guest = guest;
    if guest.write_all(&req.rest).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut guest).await;
}

/// How long `/tunnel` waits for the guest to answer ARP.
const TUNNEL_WAIT: Duration = Duration::from_secs(5);

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
            // Every IPv6 address seen from a MAC (SLAAC or DHCPv6).
            let ip6_of = |mac: &[u8; 6]| {
                let mut v6: Vec<String> = st
                    .switch
                    .tx
                    .neighbors
                    .iter()
                    .filter(|(ip, m)| *m == mac && ip.is_ipv6())
                    .map(|(ip, _)| ip.to_string())
                    .collect();
                v6.sort();
                v6
            };
            let mut leases: Vec<Value> = st
                .dhcp
                .leases()
                .map(|l| {
                    json!({
                        "mac": mac_text(&l.mac),
                        "ip": l.ip.to_string(),
                        "ip6": ip6_of(&l.mac),
                        "hostname": l.hostname,
                        "expires_in": l.expires.saturating_duration_since(now).as_secs(),
                    })
                })
                .collect();
            leases.extend(st.dhcp6.leases().map(|l| {
                json!({
                    "mac": mac_text(&l.mac),
                    "dhcp6": l.addr.to_string(),
                    "duid": l.duid.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                    "hostname": l.hostname,
                    "expires_in": l.expires.saturating_duration_since(now).as_secs(),
                })
            }));
            Ok((200, Value::Array(leases)))
        }
        ("GET", "/dns/records") => {
            let dns = dns_of(stack)?;
            let records: Vec<Value> = dns
                .records()
                .list()
                .into_iter()
                .map(|(n, a)| {
                    let show = |ip: Option<String>| ip.map_or(Value::Null, Value::String);
                    json!({ "name": n, "ip": show(a.v4.map(|i| i.to_string())), "ip6": show(a.v6.map(|i| i.to_string())) })
                })
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
            // "ip" (IPv4 or IPv6) and/or "ip6" (IPv6): a name for either
            // family or both.
            let field = |key: &str| -> Result<Option<IpAddr>, HttpError> {
                match body.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => v
                        .as_str()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        .filter(|ip| key == "ip" || ip.is_ipv6())
                        .map(Some)
                        .ok_or_else(|| error(400, format!("\"{key}\" is not an IP address"))),
                }
            };
            let addrs: Vec<IpAddr> = [field("ip")?, field("ip6")?].into_iter().flatten().collect();
            if addrs.is_empty() {
                return Err(error(400, "missing string field \"ip\" (or \"ip6\")"));
            }
            let owner = ferry_dns::Owner::Static(format!("api:{name}"));
            let mut records = dns.records();
            records.unregister_owner(&owner);
            for ip in &addrs {
                records.register(name, *ip, owner.clone()).map_err(|e| error(400, e))?;
            }
            drop(records);
            let zones = dns.records().zones().to_vec();
            let names: Vec<String> = zones
                .iter()
                .map(|z| format!("{}.{z}", name.to_ascii_lowercase()))
                .collect();
            let v4 = addrs.iter().find(|a| a.is_ipv4()).map(ToString::to_string);
            let v6 = addrs.iter().find(|a| a.is_ipv6()).map(ToString::to_string);
            Ok((201, json!({ "names": names, "ip": v4, "ip6": v6 })))
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
        ("GET", "/forwards") => Ok((
            200,
            Value::Array(stack.borrow().list_forwards().iter().map(forward_json).collect()),
        )),
        ("POST", "/forwards") => {
            let body = parse_json(req)?;
            let publish = body
                .get("publish")
                .and_then(Value::as_str)
                .ok_or_else(|| error(400, "missing string field \"publish\""))?;
            let guest = match body.get("guest").and_then(Value::as_str) {
                Some(g) => GuestTarget::parse(g),
                None => GuestTarget::Ip(stack.borrow().cfg.first_guest.into()),
            };
            let specs = parse_publish(publish, &guest).map_err(|e| error(400, e.to_string()))?;
            add_all(stack, &specs)?;
            Ok((201, Value::Array(specs.iter().map(forward_json).collect())))
        }
        ("DELETE", p) if p.starts_with("/forwards/") => {
            let rest = &p["/forwards/".len()..];
            let (proto, host) = rest
                .split_once('/')
                .ok_or_else(|| error(400, "expected /forwards/PROTO/IP:PORT"))?;
            let proto = Proto::parse(proto).ok_or_else(|| error(400, format!("unknown protocol {proto:?}")))?;
            let host: SocketAddr = host
                .parse()
                .map_err(|_| error(400, format!("{host:?} is not IP:PORT")))?;
            if stack.borrow_mut().remove_forward(proto, host) {
                Ok((200, json!({ "removed": format!("{host}/{}", proto.as_str()) })))
            } else {
                Err(error(404, format!("no forward on {host}/{}", proto.as_str())))
            }
        }
        ("GET", "/services/forwarder/all") => {
            let all: Vec<Value> = stack
                .borrow()
                .list_forwards()
                .iter()
                .map(|f| json!({ "local": f.host.to_string(), "remote": f.guest.with_port(f.guest_port), "protocol": f.proto.as_str() }))
                .collect();
            Ok((200, Value::Array(all)))
        }
        ("POST", "/services/forwarder/expose") => {
            let (proto, local, body) = gvproxy_fields(req)?;
            let remote = body
                .get("remote")
                .and_then(Value::as_str)
                .ok_or_else(|| error(400, "missing \"remote\""))?;
            let (guest, port) = remote
                .rsplit_once(':')
                .ok_or_else(|| error(400, "remote must be HOST:PORT"))?;
            let guest_port: u16 = port.parse().map_err(|_| error(400, "bad remote port"))?;
            add_all(
                stack,
                &[ForwardSpec {
                    proto,
                    host: local,
                    guest: GuestTarget::parse(guest),
                    guest_port,
                }],
            )?;
            Ok((200, json!({})))
        }
        // gvproxy's other service paths, with its JSON shapes.
        ("GET", "/services/dhcp/leases") => {
            let st = stack.borrow();
            let leases: serde_json::Map<String, Value> = st
                .dhcp
                .leases()
                .map(|l| (l.ip.to_string(), json!(mac_text(&l.mac))))
                .collect();
            Ok((200, Value::Object(leases)))
        }
        ("GET", "/cam") => {
            let st = stack.borrow();
            let cam: serde_json::Map<String, Value> = st
                .switch
                .tx
                .mac_port
                .iter()
                .map(|(mac, port)| (mac_text(mac), json!(port)))
                .collect();
            Ok((200, Value::Object(cam)))
        }
        ("GET", "/services/dns/all") => {
            let dns = dns_of(stack)?;
            let records = dns.records();
            // Names grouped by zone: each name's first label under the rest.
            let mut zones: std::collections::BTreeMap<String, Vec<Value>> = std::collections::BTreeMap::new();
            for (name, addrs) in records.builtins().into_iter().chain(records.list()) {
                let (label, zone) = name.split_once('.').unwrap_or((name.as_str(), ""));
                for ip in addrs.v4.map(IpAddr::V4).into_iter().chain(addrs.v6.map(IpAddr::V6)) {
                    zones
                        .entry(format!("{zone}."))
                        .or_default()
                        .push(json!({ "Name": label, "IP": ip.to_string() }));
                }
            }
            let all: Vec<Value> = zones
                .into_iter()
                .map(|(zone, recs)| json!({ "Name": zone, "Records": recs, "DefaultIP": null }))
                .collect();
            Ok((200, Value::Array(all)))
        }
        ("POST", "/services/dns/add") => {
            let dns = dns_of(stack)?;
            let body = parse_json(req)?;
            let zone = body
                .get("Name")
                .and_then(Value::as_str)
                .ok_or_else(|| error(400, "missing string field \"Name\" (the zone)"))?;
            let records = body
                .get("Records")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut table = dns.records();
            for r in &records {
                let name = r
                    .get("Name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| error(400, "a record without \"Name\""))?;
                let ip: IpAddr = r
                    .get("IP")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| error(400, format!("record {name:?}: \"IP\" is not an IP address")))?;
                table
                    .register_in_zone(zone, name, ip, ferry_dns::Owner::Static(format!("gvproxy:{zone}")))
                    .map_err(|e| error(400, e))?;
            }
            Ok((200, json!({})))
        }
        ("POST", "/services/forwarder/unexpose") => {
            let (proto, local, _) = gvproxy_fields(req)?;
            if stack.borrow_mut().remove_forward(proto, local) {
                Ok((200, json!({})))
            } else {
                Err(error(404, format!("no forward on {local}")))
            }
        }
        (_, "/health" | "/stats" | "/leases" | "/dns/records" | "/forwards") => {
            Err(error(405, format!("{} not allowed on {path}", req.method)))
        }
        _ => Err(error(404, format!("no such endpoint {path}"))),
    }
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn forward_json(f: &ForwardSpec) -> Value {
    json!({ "proto": f.proto.as_str(), "host": f.host.to_string(), "guest": f.guest.to_string(), "guest_port": f.guest_port })
}

/// Adds every spec, or none: a failure undoes the ones already added.
fn add_all(stack: &StackRef, specs: &[ForwardSpec]) -> Result<(), HttpError> {
    let mut st = stack.borrow_mut();
    for (i, spec) in specs.iter().enumerate() {
        if let Err(e) = st.add_forward(spec.clone()) {
            for done in &specs[..i] {
                st.remove_forward(done.proto, done.host);
            }
            return Err(error(409, e.to_string()));
        }
    }
    Ok(())
}

/// gvproxy's {"local": "IP:PORT", "protocol": "tcp"|"udp"} (protocol defaults to tcp).
fn gvproxy_fields(req: &Request) -> Result<(Proto, SocketAddr, Value), HttpError> {
    let body = parse_json(req)?;
    let local = body
        .get("local")
        .and_then(Value::as_str)
        .ok_or_else(|| error(400, "missing \"local\""))?;
    // gvproxy accepts ":PORT" for all addresses.
    let local = if local.starts_with(':') {
        format!("0.0.0.0{local}")
    } else {
        local.to_string()
    };
    let local: SocketAddr = local
        .parse()
        .map_err(|_| error(400, format!("\"local\" {local:?} is not IP:PORT")))?;
    let p = body.get("protocol").and_then(Value::as_str).unwrap_or("tcp");
    let proto = Proto::parse(p).ok_or_else(|| error(400, format!("unknown protocol {p:?}")))?;
    Ok((proto, local, body))
}

fn dns_of(stack: &StackRef) -> Result<std::sync::Arc<ferry_dns::DnsServer>, HttpError> {
    stack
        .borrow()
        .dns
        .clone()
        .ok_or_else(|| error(409, "DNS is disabled (--no-dns)"))
}
