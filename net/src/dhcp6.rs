//! DHCPv6 (RFC 8415). Stateless always: Information-Request gets the DNS
//! server and the domain search list (RFC 3646). Stateful when the plan
//! asks for it (`Ipv6Plan::stateful`): Solicit/Request/Renew/Rebind get an
//! IA_NA address from the /64 (static by DUID or MAC first, then a pool at
//! `prefix::1:0`), Rapid Commit is honoured, Release/Decline give the
//! address back, and a client FQDN option (RFC 4704) names the guest in
//! DNS, as a DHCPv4 host name does. SLAAC keeps working beside it (the RA
//! has both the A and the M flag), as dnsmasq's `slaac` mode does.
//!
//! Parsing is apart from I/O: [`Dhcp6Server::handle`] turns one request
//! into reply bytes and the lease change the caller applies to DNS; time is
//! passed in.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::config::Mac;
use crate::wire::Writer;

pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;

const SOLICIT: u8 = 1;
const ADVERTISE: u8 = 2;
const REQUEST: u8 = 3;
const CONFIRM: u8 = 4;
const RENEW: u8 = 5;
const REBIND: u8 = 6;
const REPLY: u8 = 7;
const RELEASE: u8 = 8;
const DECLINE: u8 = 9;
const INFORMATION_REQUEST: u8 = 11;

const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_IA_NA: u16 = 3;
const OPT_IAADDR: u16 = 5;
const OPT_STATUS_CODE: u16 = 13;
const OPT_RAPID_COMMIT: u16 = 14;
const OPT_DNS_SERVERS: u16 = 23;
const OPT_DOMAIN_LIST: u16 = 24;
const OPT_CLIENT_FQDN: u16 = 39;

const STATUS_SUCCESS: u16 = 0;
const STATUS_NO_ADDRS_AVAIL: u16 = 2;
const STATUS_NOT_ON_LINK: u16 = 4;

/// Longest client identifier (DUID) accepted (RFC 8415: 130 bytes).
const MAX_DUID: usize = 130;
/// Leases kept at most; expired ones are reused first. A guest cannot grow
/// the table past this by inventing DUIDs.
pub const MAX_LEASES: usize = 4096;
/// Where dynamic addresses start in the /64: `prefix::1:0`.
const POOL_BASE: u64 = 0x1_0000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Dhcp6Error {
    /// Shorter than a header, or an option runs past the end.
    #[error("malformed DHCPv6 message")]
    Malformed,
}

/// Who a static lease is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseKey {
    Mac(Mac),
    /// The client's DUID, as it sends it in its Client Identifier.
    Duid(Vec<u8>),
}

/// What the server knows to tell.
pub struct Info<'a> {
    pub server_mac: Mac,
    pub dns: Option<Ipv6Addr>,
    pub search: &'a [String],
    /// The /64 to lease from (None: stateless only).
    pub stateful: Option<Ipv6Addr>,
    pub static_leases: &'a [(LeaseKey, Ipv6Addr)],
    /// Addresses never leased (the gateway, DNS address, host alias).
    pub reserved: &'a [Ipv6Addr],
    pub lease_time: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease6 {
    pub duid: Vec<u8>,
    pub mac: Mac,
    pub addr: Ipv6Addr,
    pub hostname: Option<String>,
    pub expires: Instant,
}

/// What a handled message changed, for the caller to mirror in DNS.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Reply length in the output buffer (None: no reply).
    pub len: Option<usize>,
    /// A lease was committed: (client MAC, address, host name).
    pub bound: Option<(Mac, Ipv6Addr, Option<String>)>,
    /// A lease was given back.
    pub released: Option<(Mac, Ipv6Addr)>,
}

/// The parts of a client message the server uses.
struct Request<'a> {
    kind: u8,
    xid: [u8; 3],
    client_id: Option<&'a [u8]>,
    server_id: Option<&'a [u8]>,
    /// IAID of the first IA_NA, and the addresses the client put in it.
    ia_na: Option<([u8; 4], Vec<Ipv6Addr>)>,
    rapid_commit: bool,
    fqdn: Option<String>,
}

fn options<'a>(
    mut opts: &'a [u8],
    mut each: impl FnMut(u16, &'a [u8]) -> Result<(), Dhcp6Error>,
) -> Result<(), Dhcp6Error> {
    while !opts.is_empty() {
        let head = opts.get(..4).ok_or(Dhcp6Error::Malformed)?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let body = opts.get(4..4 + len).ok_or(Dhcp6Error::Malformed)?;
        each(code, body)?;
        opts = &opts[4 + len..];
    }
    Ok(())
}

/// A DNS wire-format name (possibly unqualified, RFC 4704 §4.2) as text.
fn wire_name(mut b: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    while let Some((&len, rest)) = b.split_first() {
        if len == 0 {
            break;
        }
        let label = rest.get(..usize::from(len))?;
        labels.push(std::str::from_utf8(label).ok()?.to_ascii_lowercase());
        b = &rest[usize::from(len)..];
    }
    (!labels.is_empty()).then(|| labels.join("."))
}

fn parse(msg: &[u8]) -> Result<Request<'_>, Dhcp6Error> {
    if msg.len() < 4 {
        return Err(Dhcp6Error::Malformed);
    }
    let mut r = Request {
        kind: msg[0],
        xid: [msg[1], msg[2], msg[3]],
        client_id: None,
        server_id: None,
        ia_na: None,
        rapid_commit: false,
        fqdn: None,
    };
    options(&msg[4..], |code, body| {
        match code {
            OPT_CLIENTID | OPT_SERVERID => {
                if body.is_empty() || body.len() > MAX_DUID {
                    return Err(Dhcp6Error::Malformed);
                }
                if code == OPT_CLIENTID {
                    r.client_id = Some(body);
                } else {
                    r.server_id = Some(body);
                }
            }
            OPT_IA_NA if r.ia_na.is_none() => {
                let iaid: [u8; 4] = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(Dhcp6Error::Malformed)?;
                let mut addrs = Vec::new();
                options(body.get(12..).ok_or(Dhcp6Error::Malformed)?, |c, b| {
                    if c == OPT_IAADDR {
                        let a: [u8; 16] = b
                            .get(..16)
                            .and_then(|a| a.try_into().ok())
                            .ok_or(Dhcp6Error::Malformed)?;
                        addrs.push(Ipv6Addr::from(a));
                    }
                    Ok(())
                })?;
                r.ia_na = Some((iaid, addrs));
            }
            OPT_RAPID_COMMIT => r.rapid_commit = true,
            OPT_CLIENT_FQDN => r.fqdn = body.get(1..).and_then(wire_name),
            _ => {}
        }
        Ok(())
    })?;
    Ok(r)
}

/// The MAC inside a DUID-LLT (type 1) or DUID-LL (type 3) over Ethernet.
fn duid_mac(duid: &[u8]) -> Option<Mac> {
    let at = match duid.get(..4)? {
        [0, 1, 0, 1] => 8,
        [0, 3, 0, 1] => 4,
        _ => return None,
    };
    duid.get(at..at + 6)?.try_into().ok()
}

fn pool_addr(prefix: Ipv6Addr, n: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(prefix) | u128::from(POOL_BASE + n))
}

/// Leases, by client DUID.
#[derive(Default)]
pub struct Dhcp6Server {
    leases: HashMap<Vec<u8>, Lease6>,
}

impl Dhcp6Server {
    pub fn new() -> Dhcp6Server {
        Dhcp6Server::default()
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease6> {
        self.leases.values()
    }

    /// The address for a client: its static lease, its current lease, or
    /// the first free pool address. None when the table is full.
    fn choose(&mut self, info: &Info<'_>, prefix: Ipv6Addr, duid: &[u8], mac: Mac, now: Instant) -> Option<Ipv6Addr> {
        let fixed = info.static_leases.iter().find_map(|(k, a)| match k {
            LeaseKey::Duid(d) if d == duid => Some(*a),
            _ => None,
        });
        let fixed = fixed.or_else(|| {
            info.static_leases.iter().find_map(|(k, a)| match k {
                LeaseKey::Mac(m) if *m == mac || Some(*m) == duid_mac(duid) => Some(*a),
                _ => None,
            })
        });
        if let Some(a) = fixed {
            return Some(a);
        }
        if let Some(l) = self.leases.get(duid) {
            return Some(l.addr);
        }
        if self.leases.len() >= MAX_LEASES {
            // Full: make room from expired leases, or refuse.
            self.leases.retain(|_, l| l.expires > now);
            if self.leases.len() >= MAX_LEASES {
                return None;
            }
        }
        let taken: std::collections::HashSet<Ipv6Addr> = info
            .reserved
            .iter()
            .copied()
            .chain(info.static_leases.iter().map(|(_, a)| *a))
            .chain(self.leases.values().filter(|l| l.expires > now).map(|l| l.addr))
            .collect();
        (0..(MAX_LEASES + info.static_leases.len() + info.reserved.len()) as u64)
            .map(|n| pool_addr(prefix, n))
            .find(|a| !taken.contains(a))
    }

    /// Answers one client message from `mac`.
    pub fn handle(
        &mut self,
        msg: &[u8],
        info: &Info<'_>,
        mac: Mac,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Outcome, Dhcp6Error> {
        let req = parse(msg)?;
        let server_id = server_duid(info.server_mac);
        if req.server_id.is_some_and(|id| id != server_id) {
            // Meant for another server.
            return Ok(Outcome::default());
        }
        let mut outcome = Outcome::default();
        let mut w = Writer::new(out);
        let kind = match req.kind {
            INFORMATION_REQUEST => REPLY,
            SOLICIT if req.rapid_commit => REPLY,
            SOLICIT => ADVERTISE,
            REQUEST | CONFIRM | RENEW | REBIND | RELEASE | DECLINE => REPLY,
            _ => return Ok(outcome),
        };
        let stateful_kind = !matches!(req.kind, INFORMATION_REQUEST);
        let (Some(prefix), true) = (info.stateful, stateful_kind) else {
            if stateful_kind {
                // Stateless: addresses come from SLAAC only.
                return Ok(outcome);
            }
            outcome.len = reply(&mut w, kind, &req, &server_id, info, None, None);
            return Ok(outcome);
        };
        let Some(duid) = req.client_id else {
            return Ok(outcome);
        };
        let status = |code: u16| Some(code);
        let (ia, status) = match req.kind {
            CONFIRM => {
                let on_link = req
                    .ia_na
                    .as_ref()
                    .is_none_or(|(_, a)| a.iter().all(|a| same_64(*a, prefix)));
                (None, status(if on_link { STATUS_SUCCESS } else { STATUS_NOT_ON_LINK }))
            }
            RELEASE | DECLINE => {
                if let Some(l) = self.leases.remove(duid) {
                    outcome.released = Some((l.mac, l.addr));
                }
                (None, status(STATUS_SUCCESS))
            }
            _ => match (&req.ia_na, self.choose(info, prefix, duid, mac, now)) {
                (None, _) => (None, None),
                (Some((iaid, _)), Some(addr)) => {
                    let commit = req.kind != SOLICIT || req.rapid_commit;
                    if commit {
                        let hostname = req
                            .fqdn
                            .as_deref()
                            .map(|n| n.split('.').next().unwrap_or(n).to_string());
                        let lease = Lease6 {
                            duid: duid.to_vec(),
                            mac,
                            addr,
                            hostname: hostname.clone(),
                            expires: now + info.lease_time,
                        };
                        self.leases.insert(duid.to_vec(), lease);
                        outcome.bound = Some((mac, addr, hostname));
                    }
                    (Some((*iaid, Some(addr))), None)
                }
                (Some((iaid, _)), None) => (Some((*iaid, None)), None),
            },
        };
        outcome.len = reply(&mut w, kind, &req, &server_id, info, ia, status);
        Ok(outcome)
    }
}

fn same_64(a: Ipv6Addr, prefix: Ipv6Addr) -> bool {
    a.segments()[..4] == prefix.segments()[..4]
}

/// DUID-LL: type 3, hardware type 1 (Ethernet), the gateway's MAC.
fn server_duid(mac: Mac) -> [u8; 10] {
    let mut duid = [0u8; 10];
    duid[1] = 3;
    duid[3] = 1;
    duid[4..].copy_from_slice(&mac);
    duid
}

fn opt(w: &mut Writer<'_>, code: u16, body: &[u8]) -> Option<()> {
    w.put(&code.to_be_bytes())?;
    w.put(&u16::try_from(body.len()).ok()?.to_be_bytes())?;
    w.put(body)
}

/// An option inside another's body (IA_NA's IAADDR and status); bodies
/// here are a few dozen bytes.
fn nested_opt(into: &mut Vec<u8>, code: u16, body: &[u8]) {
    into.extend_from_slice(&code.to_be_bytes());
    into.extend_from_slice(&(body.len() as u16).to_be_bytes());
    into.extend_from_slice(body);
}

fn status_opt(code: u16, text: &str) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(text.as_bytes());
    b
}

/// Writes the reply; None when `out` is too small (no reply rather than a
/// cut one). `ia`: the IA_NA's IAID and its address (None: none free).
fn reply(
    w: &mut Writer<'_>,
    kind: u8,
    req: &Request<'_>,
    server_id: &[u8],
    info: &Info<'_>,
    ia: Option<([u8; 4], Option<Ipv6Addr>)>,
    status: Option<u16>,
) -> Option<usize> {
    w.put(&[kind])?;
    w.put(&req.xid)?;
    if let Some(id) = req.client_id {
        opt(w, OPT_CLIENTID, id)?;
    }
    opt(w, OPT_SERVERID, server_id)?;
    if kind == REPLY && req.kind == SOLICIT {
        opt(w, OPT_RAPID_COMMIT, &[])?;
    }
    if let Some((iaid, addr)) = ia {
        let secs = u32::try_from(info.lease_time.as_secs()).unwrap_or(u32::MAX);
        let mut body = iaid.to_vec();
        body.extend_from_slice(&(secs / 2).to_be_bytes()); // T1
        body.extend_from_slice(&(secs / 5 * 4).to_be_bytes()); // T2
        match addr {
            Some(a) => {
                let mut ia_addr = a.octets().to_vec();
                ia_addr.extend_from_slice(&secs.to_be_bytes()); // preferred
                ia_addr.extend_from_slice(&secs.to_be_bytes()); // valid
                nested_opt(&mut body, OPT_IAADDR, &ia_addr);
            }
            None => nested_opt(
                &mut body,
                OPT_STATUS_CODE,
                &status_opt(STATUS_NO_ADDRS_AVAIL, "no addresses free"),
            ),
        }
        opt(w, OPT_IA_NA, &body)?;
    }
    if let Some(code) = status {
        opt(
            w,
            OPT_STATUS_CODE,
            &status_opt(code, if code == 0 { "ok" } else { "not on link" }),
        )?;
    }
    if let (Some(name), Some(_)) = (&req.fqdn, &ia) {
        // S: the server updates AAAA (ferry's own DNS does).
        let mut body = vec![0x01];
        let mut names = vec![0u8; crate::wire::encoded_name_len(name)];
        crate::wire::encode_name(&mut Writer::new(&mut names), name)?;
        body.extend_from_slice(&names);
        opt(w, OPT_CLIENT_FQDN, &body)?;
    }
    if let Some(dns) = info.dns {
        opt(w, OPT_DNS_SERVERS, &dns.octets())?;
    }
    let mut names = vec![0u8; info.search.iter().map(|d| crate::wire::encoded_name_len(d)).sum()];
    let mut nw = Writer::new(&mut names);
    for d in info.search {
        crate::wire::encode_name(&mut nw, d)?;
    }
    if !names.is_empty() {
        opt(w, OPT_DOMAIN_LIST, &names)?;
    }
    Some(w.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];
    const PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);

    fn info<'a>(stateful: bool, statics: &'a [(LeaseKey, Ipv6Addr)], search: &'a [String]) -> Info<'a> {
        Info {
            server_mac: [0x52, 0x55, 10, 0, 2, 1],
            dns: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3)),
            search,
            stateful: stateful.then_some(PREFIX),
            static_leases: statics,
            reserved: &[],
            lease_time: Duration::from_secs(3600),
        }
    }

    fn find_opt(r: &[u8], code: u16) -> Option<&[u8]> {
        let mut found = None;
        options(&r[4..], |c, b| {
            if c == code && found.is_none() {
                found = Some(b.as_ptr() as usize - r.as_ptr() as usize);
            }
            Ok(())
        })
        .unwrap();
        found.map(|at| {
            let len = usize::from(u16::from_be_bytes([r[at - 2], r[at - 1]]));
            &r[at..at + len]
        })
    }

    /// A client message: kind, xid 1 2 3, the client id, then `rest`.
    fn msg(kind: u8, duid: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut m = vec![kind, 1, 2, 3, 0, 1, 0, duid.len() as u8];
        m.extend_from_slice(duid);
        m.extend_from_slice(rest);
        m
    }

    const IA_NA: [u8; 16] = [0, 3, 0, 12, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0];

    fn leased(r: &[u8]) -> Option<Ipv6Addr> {
        let ia = find_opt(r, OPT_IA_NA)?;
        let mut addr = None;
        options(&ia[12..], |c, b| {
            if c == OPT_IAADDR {
                addr = Some(Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap()));
            }
            Ok(())
        })
        .unwrap();
        addr
    }

    #[test]
    fn information_request_gets_dns() {
        let search = ["test".to_string()];
        let mut s = Dhcp6Server::new();
        let req = [
            11, 1, 2, 3, 0, 1, 0, 4, 0xde, 0xad, 0xbe, 0xef, 0, 6, 0, 4, 0, 23, 0, 24,
        ];
        let mut out = [0u8; 256];
        let o = s
            .handle(&req, &info(false, &[], &search), MAC, Instant::now(), &mut out)
            .unwrap();
        let r = &out[..o.len.unwrap()];
        assert_eq!(&r[..4], &[7, 1, 2, 3]);
        assert_eq!(find_opt(r, OPT_CLIENTID), Some(&[0xde, 0xad, 0xbe, 0xef][..]));
        assert_eq!(
            find_opt(r, OPT_DNS_SERVERS),
            Some(&info(false, &[], &[]).dns.unwrap().octets()[..])
        );
        assert_eq!(find_opt(r, OPT_DOMAIN_LIST), Some(&[4, b't', b'e', b's', b't', 0][..]));
    }

    #[test]
    fn stateless_server_ignores_solicit() {
        let mut s = Dhcp6Server::new();
        let mut out = [0u8; 256];
        let o = s.handle(
            &msg(SOLICIT, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6], &IA_NA),
            &info(false, &[], &[]),
            MAC,
            Instant::now(),
            &mut out,
        );
        assert_eq!(o, Ok(Outcome::default()));
    }

    #[test]
    fn solicit_request_renew_release() {
        let now = Instant::now();
        let mut s = Dhcp6Server::new();
        let mut out = [0u8; 512];
        let duid = [0, 3, 0, 1, 1, 2, 3, 4, 5, 6];
        let i = info(true, &[], &[]);
        // Solicit: an Advertise offering the first pool address, no lease yet.
        let o = s.handle(&msg(SOLICIT, &duid, &IA_NA), &i, MAC, now, &mut out).unwrap();
        assert_eq!(out[0], ADVERTISE);
        let first = pool_addr(PREFIX, 0);
        assert_eq!(leased(&out[..o.len.unwrap()]), Some(first));
        assert_eq!(o.bound, None);
        // Request with our server id and a FQDN: committed and named.
        let mut rest = IA_NA.to_vec();
        rest.extend_from_slice(&[0, 2, 0, 10]);
        rest.extend_from_slice(&server_duid(i.server_mac));
        rest.extend_from_slice(&[0, 39, 0, 6, 1, 3, b'w', b'e', b'b', 0]);
        let o = s.handle(&msg(REQUEST, &duid, &rest), &i, MAC, now, &mut out).unwrap();
        let r = &out[..o.len.unwrap()];
        assert_eq!(r[0], REPLY);
        assert_eq!(leased(r), Some(first));
        assert_eq!(o.bound, Some((MAC, first, Some("web".into()))));
        assert!(find_opt(r, OPT_CLIENT_FQDN).is_some());
        // A second client gets the next address; Renew keeps the first's.
        let other = [0, 3, 0, 1, 9, 9, 9, 9, 9, 9];
        let o = s
            .handle(&msg(REQUEST, &other, &IA_NA), &i, [9; 6], now, &mut out)
            .unwrap();
        assert_eq!(leased(&out[..o.len.unwrap()]), Some(pool_addr(PREFIX, 1)));
        let o = s.handle(&msg(RENEW, &duid, &IA_NA), &i, MAC, now, &mut out).unwrap();
        assert_eq!(leased(&out[..o.len.unwrap()]), Some(first));
        // A Request for another server is not ours to answer.
        let mut rest = IA_NA.to_vec();
        rest.extend_from_slice(&[0, 2, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            s.handle(&msg(REQUEST, &duid, &rest), &i, MAC, now, &mut out),
            Ok(Outcome::default())
        );
        // Release gives it back.
        let o = s.handle(&msg(RELEASE, &duid, &IA_NA), &i, MAC, now, &mut out).unwrap();
        assert_eq!(o.released, Some((MAC, first)));
        assert_eq!(s.leases().count(), 1);
    }

    #[test]
    fn rapid_commit_and_static_leases() {
        let now = Instant::now();
        let mut s = Dhcp6Server::new();
        let mut out = [0u8; 512];
        let fixed = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x42);
        let by_duid = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x43);
        let statics = [(LeaseKey::Mac(MAC), fixed), (LeaseKey::Duid(vec![0, 2, 7, 7]), by_duid)];
        let i = info(true, &statics, &[]);
        let mut rest = IA_NA.to_vec();
        rest.extend_from_slice(&[0, 14, 0, 0]);
        // By the MAC inside a DUID-LL, from any port.
        let o = s
            .handle(
                &msg(SOLICIT, &[0, 3, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee], &rest),
                &i,
                [1; 6],
                now,
                &mut out,
            )
            .unwrap();
        let r = &out[..o.len.unwrap()];
        assert_eq!(r[0], REPLY);
        assert!(find_opt(r, OPT_RAPID_COMMIT).is_some());
        assert_eq!(leased(r), Some(fixed));
        // By DUID.
        let o = s
            .handle(&msg(REQUEST, &[0, 2, 7, 7], &IA_NA), &i, [2; 6], now, &mut out)
            .unwrap();
        assert_eq!(leased(&out[..o.len.unwrap()]), Some(by_duid));
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut s = Dhcp6Server::new();
        let mut out = [0u8; 512];
        let i = info(true, &[], &[]);
        for n in 0..MAX_LEASES as u32 + 10 {
            let duid = [0, 2, 0, 0, (n >> 24) as u8, (n >> 16) as u8, (n >> 8) as u8, n as u8];
            let o = s.handle(&msg(REQUEST, &duid, &IA_NA), &i, MAC, now, &mut out).unwrap();
            let r = &out[..o.len.unwrap()];
            if n as usize >= MAX_LEASES {
                assert_eq!(leased(r), None, "lease {n} past the bound");
                assert!(r.windows(2).any(|w| w == STATUS_NO_ADDRS_AVAIL.to_be_bytes()));
            }
        }
        assert_eq!(s.leases().count(), MAX_LEASES);
        // Once they expire, there is room again.
        let later = now + Duration::from_secs(7200);
        let o = s
            .handle(&msg(REQUEST, &[0, 2, 1, 1], &IA_NA), &i, MAC, later, &mut out)
            .unwrap();
        assert!(leased(&out[..o.len.unwrap()]).is_some());
    }

    #[test]
    fn garbage() {
        let mut s = Dhcp6Server::new();
        let mut out = [0u8; 256];
        let i = info(true, &[], &[]);
        let now = Instant::now();
        assert_eq!(
            s.handle(&[11, 0], &i, MAC, now, &mut out).err(),
            Some(Dhcp6Error::Malformed)
        );
        // Option running past the end; empty client id; IA_NA too short.
        for bad in [
            &[11, 0, 0, 1, 0, 1, 0, 9, 1][..],
            &[11, 0, 0, 1, 0, 1, 0, 0],
            &[3, 0, 0, 1, 0, 3, 0, 2, 0, 0],
        ] {
            assert_eq!(s.handle(bad, &i, MAC, now, &mut out).err(), Some(Dhcp6Error::Malformed));
        }
        // Too small an output buffer: no reply rather than a cut one.
        let o = s.handle(&[11, 0, 0, 1], &i, MAC, now, &mut [0u8; 10]).unwrap();
        assert_eq!(o.len, None);
    }
}
