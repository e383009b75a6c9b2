//! DHCPv4 server: leases by MAC (static leases first), router, DNS, domain
//! search, MTU, lease times; records the client's host name option.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::{Mac, NetConfig};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header before the magic cookie.
const HEADER_LEN: usize = 236;

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;
const RELEASE: u8 = 7;
const INFORM: u8 = 8;

/// The fields of a client message the server acts on.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub message_type: u8,
    pub xid: [u8; 4],
    pub flags: [u8; 2],
    pub ciaddr: Ipv4Addr,
    pub chaddr: Mac,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub hostname: Option<&'a str>,
}

/// Why a message was ignored.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Truncated,
    NotBootRequest,
    NoMagic,
    NoMessageType,
}

fn ip_at(b: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

pub fn parse(payload: &[u8]) -> Result<Request<'_>, ParseError> {
    if payload.len() < HEADER_LEN + 4 {
        return Err(ParseError::Truncated);
    }
    // op=BOOTREQUEST, htype=Ethernet, hlen=6.
    if payload[0] != 1 || payload[1] != 1 || payload[2] != 6 {
        return Err(ParseError::NotBootRequest);
    }
    if payload[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(ParseError::NoMagic);
    }
    let mut req = Request {
        message_type: 0,
        xid: [payload[4], payload[5], payload[6], payload[7]],
        flags: [payload[10], payload[11]],
        ciaddr: ip_at(&payload[12..]).ok_or(ParseError::Truncated)?,
        chaddr: payload[28..34].try_into().map_err(|_| ParseError::Truncated)?,
        requested_ip: None,
        server_id: None,
        hostname: None,
    };
    let mut opts = &payload[HEADER_LEN + 4..];
    while let [kind, rest @ ..] = opts {
        match *kind {
            0 => opts = rest,
            255 => break,
            kind => {
                let [len, rest @ ..] = rest else {
                    return Err(ParseError::Truncated);
                };
                let data = rest.get(..usize::from(*len)).ok_or(ParseError::Truncated)?;
                match kind {
                    53 if data.len() == 1 => req.message_type = data[0],
                    50 => req.requested_ip = ip_at(data),
                    54 => req.server_id = ip_at(data),
                    12 => req.hostname = std::str::from_utf8(data).ok().filter(|h| valid_hostname(h)),
                    _ => {}
                }
                opts = &rest[usize::from(*len)..];
            }
        }
    }
    if req.message_type == 0 {
        return Err(ParseError::NoMessageType);
    }
    Ok(req)
}

/// A DNS label: what a host name must be before it may become a DNS name.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    pub expires: Instant,
}

/// A reply to send: its payload length in the caller's buffer and whether
/// it goes to the broadcast address.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub len: usize,
    pub dst_ip: Ipv4Addr,
    pub broadcast: bool,
}

pub struct DhcpServer {
    leases: HashMap<Mac, Lease>,
}

impl Default for DhcpServer {
    fn default() -> Self {
        DhcpServer::new()
    }
}

impl DhcpServer {
    pub fn new() -> Self {
        DhcpServer { leases: HashMap::new() }
    }

    pub fn lease(&self, mac: &Mac) -> Option<&Lease> {
        self.leases.get(mac)
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Puts back a lease from ferry net's state file; one for an address
    /// another MAC holds now is dropped.
    pub fn restore(&mut self, lease: Lease) {
        if !self.leases.values().any(|l| l.ip == lease.ip && l.mac != lease.mac) {
            self.leases.insert(lease.mac, lease);
        }
    }

    fn taken_by_other(&self, ip: Ipv4Addr, mac: &Mac, now: Instant) -> bool {
        self.leases
            .values()
            .any(|l| l.ip == ip && &l.mac != mac && l.expires > now)
    }

    fn reserved(cfg: &NetConfig, ip: Ipv4Addr, mac: &Mac) -> bool {
        ip == cfg.gateway
            || ip == cfg.dns_addr
            || Some(ip) == cfg.host_alias
            || ip == cfg.subnet
            || ip == cfg.broadcast()
            || !cfg.contains(ip)
            || cfg.static_leases.iter().any(|(m, i)| *i == ip && m != mac)
    }

    /// The address for `mac`: its static lease, its current lease, the one
    /// it asks for if free, else the first free one from `first_guest` up.
    fn choose(&self, cfg: &NetConfig, mac: &Mac, wanted: Option<Ipv4Addr>, now: Instant) -> Option<Ipv4Addr> {
        if let Some((_, ip)) = cfg.static_leases.iter().find(|(m, _)| m == mac) {
            return Some(*ip);
        }
        if let Some(lease) = self.leases.get(mac) {
            return Some(lease.ip);
        }
        let free = |ip: Ipv4Addr| !Self::reserved(cfg, ip, mac) && !self.taken_by_other(ip, mac, now);
        if let Some(ip) = wanted.filter(|ip| free(*ip)) {
            return Some(ip);
        }
        let start = u32::from(cfg.first_guest);
        let end = u32::from(cfg.broadcast());
        (start..end).map(Ipv4Addr::from).find(|ip| free(*ip))
    }

    /// Handles one client message, writing the reply payload into `out`.
    pub fn handle(&mut self, cfg: &NetConfig, req: &Request<'_>, now: Instant, out: &mut [u8]) -> Option<Reply> {
        let (reply_type, yiaddr) = match req.message_type {
            DISCOVER => (OFFER, self.choose(cfg, &req.chaddr, req.requested_ip, now)?),
            REQUEST => {
                if req.server_id.is_some_and(|s| s != cfg.gateway) {
                    // The client picked another server; forget our offer.
                    return None;
                }
                let asked = req.requested_ip.unwrap_or(req.ciaddr);
                match self.choose(cfg, &req.chaddr, Some(asked), now) {
                    Some(ip) if ip == asked => {
                        let hostname = req
                            .hostname
                            .map(String::from)
                            .or_else(|| self.leases.get(&req.chaddr).and_then(|l| l.hostname.clone()));
                        let lease = Lease {
                            mac: req.chaddr,
                            ip,
                            hostname,
                            expires: now + cfg.lease_time,
                        };
                        self.leases.insert(req.chaddr, lease);
                        (ACK, ip)
                    }
                    _ => (NAK, Ipv4Addr::UNSPECIFIED),
                }
            }
            RELEASE | DECLINE => {
                self.leases.remove(&req.chaddr);
                return None;
            }
            INFORM => (ACK, Ipv4Addr::UNSPECIFIED),
            _ => return None,
        };
        let len = encode_reply(cfg, req, reply_type, yiaddr, out)?;
        let broadcast = req.ciaddr.is_unspecified() || reply_type == NAK;
        Some(Reply {
            len,
            dst_ip: if broadcast { Ipv4Addr::BROADCAST } else { req.ciaddr },
            broadcast,
        })
    }
}

/// Appends options to a buffer without allocating.
struct OptionWriter<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl OptionWriter<'_> {
    fn put(&mut self, kind: u8, data: &[u8]) -> Option<()> {
        let len = u8::try_from(data.len()).ok()?;
        let dst = self.buf.get_mut(self.at..self.at + 2 + data.len())?;
        dst[0] = kind;
        dst[1] = len;
        dst[2..].copy_from_slice(data);
        self.at += 2 + data.len();
        Some(())
    }

    /// Option 119 (RFC 3397): the names in DNS wire format, uncompressed.
    fn put_search(&mut self, domains: &[String]) -> Option<()> {
        let mut tmp = [0u8; 255];
        let mut n = 0;
        for domain in domains {
            for label in domain.split('.').filter(|l| !l.is_empty()) {
                let len = u8::try_from(label.len()).ok().filter(|l| *l <= 63)?;
                tmp.get_mut(n..n + 1 + label.len())?
                    .copy_from_slice(&[&[len], label.as_bytes()].concat());
                n += 1 + label.len();
            }
            *tmp.get_mut(n)? = 0;
            n += 1;
        }
        self.put(119, &tmp[..n])
    }
}

fn encode_reply(cfg: &NetConfig, req: &Request<'_>, kind: u8, yiaddr: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let header = out.get_mut(..HEADER_LEN + 4)?;
    header.fill(0);
    header[0] = 2; // BOOTREPLY
    header[1] = 1;
    header[2] = 6;
    header[4..8].copy_from_slice(&req.xid);
    header[10..12].copy_from_slice(&req.flags);
    header[12..16].copy_from_slice(&req.ciaddr.octets());
    header[16..20].copy_from_slice(&yiaddr.octets());
    header[20..24].copy_from_slice(&cfg.gateway.octets());
    header[28..34].copy_from_slice(&req.chaddr);
    header[HEADER_LEN..].copy_from_slice(&MAGIC);
    let mut w = OptionWriter {
        buf: out,
        at: HEADER_LEN + 4,
    };
    w.put(53, &[kind])?;
    w.put(54, &cfg.gateway.octets())?;
    if kind != NAK {
        if kind != ACK || !yiaddr.is_unspecified() {
            let secs = u32::try_from(cfg.lease_time.as_secs()).unwrap_or(u32::MAX);
            w.put(51, &secs.to_be_bytes())?;
            w.put(58, &(secs / 2).to_be_bytes())?;
            w.put(59, &(secs / 8 * 7).to_be_bytes())?;
        }
        w.put(1, &cfg.netmask().octets())?;
        w.put(3, &cfg.gateway.octets())?;
        w.put(6, &cfg.dns_addr.octets())?;
        w.put(28, &cfg.broadcast().octets())?;
        w.put(26, &u16::try_from(cfg.mtu).unwrap_or(1500).to_be_bytes())?;
        if let Some(first) = cfg.search_domains.first() {
            w.put(15, first.as_bytes())?;
            w.put_search(&cfg.search_domains)?;
        }
    }
    *w.buf.get_mut(w.at)? = 255;
    Some(w.at + 1)
}

/// The default lease duration, for docs and tests.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn client_msg(kind: u8, mac: Mac, extra: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&[1, 2, 3, 4]);
        p[28..34].copy_from_slice(&mac);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, kind]);
        p.extend_from_slice(extra);
        p.push(255);
        p
    }

    fn option(reply: &[u8], kind: u8) -> Option<&[u8]> {
        let mut o = &reply[HEADER_LEN + 4..];
        while let [k, len, rest @ ..] = o {
            if *k == 255 {
                break;
            }
            let data = &rest[..usize::from(*len)];
            if *k == kind {
                return Some(data);
            }
            o = &rest[usize::from(*len)..];
        }
        None
    }

    #[test]
    fn discover_request_ack_with_all_options() {
        let cfg = NetConfig::default();
        let mut server = DhcpServer::new();
        let now = Instant::now();
        let mac = [2, 0, 0, 0, 0, 9];
        let mut out = [0u8; 600];
        let disc = client_msg(DISCOVER, mac, &[12, 3, b'w', b'e', b'b']);
        let reply = server.handle(&cfg, &parse(&disc).unwrap(), now, &mut out).unwrap();
        assert!(reply.broadcast);
        assert_eq!(&out[16..20], &[10, 0, 2, 2]);
        assert_eq!(option(&out[..reply.len], 53), Some(&[OFFER][..]));
        let req = client_msg(
            REQUEST,
            mac,
            &[50, 4, 10, 0, 2, 2, 54, 4, 10, 0, 2, 1, 12, 3, b'w', b'e', b'b'],
        );
        let reply = server.handle(&cfg, &parse(&req).unwrap(), now, &mut out).unwrap();
        let o = &out[..reply.len];
        assert_eq!(option(o, 53), Some(&[ACK][..]));
        assert_eq!(option(o, 3), Some(&[10, 0, 2, 1][..]));
        assert_eq!(option(o, 6), Some(&[10, 0, 2, 1][..]));
        assert_eq!(option(o, 1), Some(&[255, 255, 255, 0][..]));
        assert_eq!(option(o, 26), Some(&65520u16.to_be_bytes()[..]));
        assert_eq!(option(o, 119), Some(&[4, b't', b'e', b's', b't', 0][..]));
        assert_eq!(option(o, 51), Some(&3600u32.to_be_bytes()[..]));
        let lease = server.leases().next().unwrap();
        assert_eq!(lease.hostname.as_deref(), Some("web"));
        // A second client gets the next address.
        let other = client_msg(DISCOVER, [2, 0, 0, 0, 0, 10], &[]);
        server.handle(&cfg, &parse(&other).unwrap(), now, &mut out).unwrap();
        assert_eq!(&out[16..20], &[10, 0, 2, 3]);
    }

    #[test]
    fn static_leases_and_naks() {
        let mac = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];
        let cfg = NetConfig {
            static_leases: vec![(mac, Ipv4Addr::new(10, 0, 2, 50))],
            ..NetConfig::default()
        };
        let mut server = DhcpServer::new();
        let mut out = [0u8; 600];
        let now = Instant::now();
        let disc = client_msg(DISCOVER, mac, &[]);
        server.handle(&cfg, &parse(&disc).unwrap(), now, &mut out).unwrap();
        assert_eq!(&out[16..20], &[10, 0, 2, 50]);
        // Asking for someone else's address is refused.
        let req = client_msg(REQUEST, [2, 0, 0, 0, 0, 1], &[50, 4, 10, 0, 2, 50]);
        let reply = server.handle(&cfg, &parse(&req).unwrap(), now, &mut out).unwrap();
        assert_eq!(option(&out[..reply.len], 53), Some(&[NAK][..]));
    }

    #[test]
    fn malformed_messages_are_rejected_not_panicking() {
        assert_eq!(parse(&[]), Err(ParseError::Truncated));
        let mut p = client_msg(DISCOVER, [0; 6], &[]);
        p[0] = 2;
        assert_eq!(parse(&p), Err(ParseError::NotBootRequest));
        let mut p = client_msg(DISCOVER, [0; 6], &[]);
        let n = p.len();
        p[n - 1] = 12; // option with a missing length byte
        assert_eq!(parse(&p), Err(ParseError::Truncated));
        let mut p = client_msg(DISCOVER, [0; 6], &[]);
        p.truncate(p.len() - 1);
        p.extend_from_slice(&[12, 200, b'x']); // length past the end
        assert_eq!(parse(&p), Err(ParseError::Truncated));
        // Hostnames that are not DNS labels are ignored.
        let p = client_msg(DISCOVER, [0; 6], &[12, 3, b'a', b' ', b'b']);
        assert_eq!(parse(&p).unwrap().hostname, None);
    }
}
