//! Stateless DHCPv6 (RFC 8415 §6.1, RFC 3646): answers Information-Request
//! with the DNS server and the domain search list. Addresses come from
//! SLAAC (the RA's prefix), so Solicit gets no answer and clients fall back
//! to the RA's "other configuration" flag, as with radvd + dnsmasq's
//! `ra-stateless` mode. Parsing is apart from I/O: `handle` turns a
//! request into reply bytes.

use std::net::Ipv6Addr;

use crate::config::Mac;

pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;

const INFORMATION_REQUEST: u8 = 11;
const REPLY: u8 = 7;

const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_DNS_SERVERS: u16 = 23;
const OPT_DOMAIN_LIST: u16 = 24;
/// Longest client identifier (DUID) echoed back (RFC 8415: 130 bytes).
const MAX_DUID: usize = 130;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Dhcp6Error {
    /// Shorter than a header, or an option runs past the end.
    #[error("malformed DHCPv6 message")]
    Malformed,
}

/// What the server knows to tell.
pub struct Info<'a> {
    pub server_mac: Mac,
    pub dns: Option<Ipv6Addr>,
    pub search: &'a [String],
}

/// Answers one client message; `Ok(None)` for messages a stateless server
/// does not answer.
pub fn handle(msg: &[u8], info: &Info<'_>, out: &mut [u8]) -> Result<Option<usize>, Dhcp6Error> {
    if msg.len() < 4 {
        return Err(Dhcp6Error::Malformed);
    }
    let mut client_id = None;
    let mut opts = &msg[4..];
    while !opts.is_empty() {
        let head = opts.get(..4).ok_or(Dhcp6Error::Malformed)?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let body = opts.get(4..4 + len).ok_or(Dhcp6Error::Malformed)?;
        if code == OPT_CLIENTID {
            if body.is_empty() || body.len() > MAX_DUID {
                return Err(Dhcp6Error::Malformed);
            }
            client_id = Some(body);
        }
        opts = &opts[4 + len..];
    }
    if msg[0] != INFORMATION_REQUEST {
        return Ok(None);
    }
    let mut w = Writer { out, at: 0 };
    let build = |w: &mut Writer<'_>| -> Option<()> {
        w.put(&[REPLY, msg[1], msg[2], msg[3]])?;
        if let Some(id) = client_id {
            w.opt(OPT_CLIENTID, id)?;
        }
        // DUID-LL: type 3, hardware type 1 (Ethernet), the gateway's MAC.
        let mut duid = [0u8; 10];
        duid[1] = 3;
        duid[3] = 1;
        duid[4..].copy_from_slice(&info.server_mac);
        w.opt(OPT_SERVERID, &duid)?;
        if let Some(dns) = info.dns {
            w.opt(OPT_DNS_SERVERS, &dns.octets())?;
        }
        let mut names = Vec::new();
        for d in info.search {
            for label in d.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
                let label = &label.as_bytes()[..label.len().min(63)];
                names.push(label.len() as u8);
                names.extend_from_slice(label);
            }
            names.push(0);
        }
        if !names.is_empty() {
            w.opt(OPT_DOMAIN_LIST, &names)?;
        }
        Some(())
    };
    Ok(build(&mut w).map(|()| w.at))
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        self.out.get_mut(self.at..self.at + bytes.len())?.copy_from_slice(bytes);
        self.at += bytes.len();
        Some(())
    }

    fn opt(&mut self, code: u16, body: &[u8]) -> Option<()> {
        self.put(&code.to_be_bytes())?;
        self.put(&u16::try_from(body.len()).ok()?.to_be_bytes())?;
        self.put(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: Info<'static> = Info {
        server_mac: [0x52, 0x55, 10, 0, 2, 1],
        dns: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3)),
        search: &[],
    };

    #[test]
    fn information_request_gets_dns() {
        let search = ["test".to_string()];
        let info = Info {
            search: &search,
            ..INFO
        };
        let req = [
            11, 1, 2, 3, 0, 1, 0, 4, 0xde, 0xad, 0xbe, 0xef, 0, 6, 0, 4, 0, 23, 0, 24,
        ];
        let mut out = [0u8; 256];
        let n = handle(&req, &info, &mut out).unwrap().unwrap();
        let r = &out[..n];
        assert_eq!(&r[..4], &[7, 1, 2, 3]);
        assert_eq!(&r[4..12], &[0, 1, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
        let dns = r.windows(4).position(|w| w == [0, 23, 0, 16]).unwrap();
        assert_eq!(&r[dns + 4..dns + 20], &INFO.dns.unwrap().octets());
        assert!(r.ends_with(&[0, 24, 0, 6, 4, b't', b'e', b's', b't', 0]));
    }

    #[test]
    fn other_messages_and_garbage() {
        let mut out = [0u8; 256];
        // Solicit: not answered by a stateless server.
        assert_eq!(handle(&[1, 0, 0, 1], &INFO, &mut out), Ok(None));
        assert_eq!(handle(&[11, 0], &INFO, &mut out), Err(Dhcp6Error::Malformed));
        // Option running past the end; empty client id.
        assert_eq!(
            handle(&[11, 0, 0, 1, 0, 1, 0, 9, 1], &INFO, &mut out),
            Err(Dhcp6Error::Malformed)
        );
        assert_eq!(
            handle(&[11, 0, 0, 1, 0, 1, 0, 0], &INFO, &mut out),
            Err(Dhcp6Error::Malformed)
        );
        // Too small an output buffer: no reply rather than a cut one.
        assert_eq!(handle(&[11, 0, 0, 1], &INFO, &mut [0u8; 10]), Ok(None));
    }
}
