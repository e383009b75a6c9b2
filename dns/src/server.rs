//! Answers one DNS message: local zones and built-in names from `Records`,
//! everything else from the cache or the upstream forwarder.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::cache::{Cache, Key};
use crate::forward::Forwarder;
use crate::metrics::DnsMetrics;
use crate::records::{Local, Records};

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Local zones, e.g. ["test"].
    pub zones: Vec<String>,
    pub upstreams: Vec<SocketAddr>,
    /// The host alias (`host.container.internal`), if host loopback is on.
    pub host: Option<Ipv4Addr>,
    pub gateway: Ipv4Addr,
    /// Their IPv6 addresses (AAAA for the built-in names), when the
    /// network has IPv6.
    pub host6: Option<std::net::Ipv6Addr>,
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// TTL of local answers: short, because guests come and go.
    pub local_ttl: u32,
    /// Per upstream and attempt.
    pub upstream_timeout: Duration,
    /// Queries per second allowed per source address (0 = unlimited).
    pub rate_limit: u32,
    pub cache_entries: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zones: vec!["test".into()],
            upstreams: Vec::new(),
            host: Some(Ipv4Addr::new(10, 0, 2, 254)),
            gateway: Ipv4Addr::new(10, 0, 2, 1),
            host6: None,
            gateway6: None,
            local_ttl: 5,
            upstream_timeout: Duration::from_millis(1500),
            rate_limit: 2000,
            cache_entries: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query that needs the upstream.
pub struct Pending {
    query: Message,
    key: Key,
    max_size: usize,
    edns: bool,
}

/// What to do with a message.
pub enum Step {
    Reply(Vec<u8>),
    Forward(Box<Pending>),
    Drop,
}

/// Classic unextended DNS over UDP.
const MIN_UDP: usize = 512;
/// What we advertise and accept at most over UDP (the DNS flag day value).
pub const MAX_UDP: u16 = 1232;
const CACHE_MAX_TTL: u32 = 86_400;

struct RateLimiter {
    per_sec: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if self.per_sec == 0.0 {
            return true;
        }
        if self.buckets.len() > 65_536 {
            self.buckets.clear();
        }
        let burst = self.per_sec * 2.0;
        let (tokens, last) = self.buckets.entry(src).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct DnsServer {
    cfg: DnsConfig,
    records: Mutex<Records>,
    cache: Mutex<Cache>,
    limiter: Mutex<RateLimiter>,
    forwarder: Forwarder,
    pub metrics: DnsMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DnsServer {
    pub fn new(cfg: DnsConfig) -> DnsServer {
        let mut records = Records::new(&cfg.zones, cfg.host, cfg.gateway);
        if let Some(gateway6) = cfg.gateway6 {
            records.set_builtin_v6(cfg.host6, gateway6);
        }
        DnsServer {
            records: Mutex::new(records),
            cache: Mutex::new(Cache::new(cfg.cache_entries, CACHE_MAX_TTL)),
            limiter: Mutex::new(RateLimiter {
                per_sec: f64::from(cfg.rate_limit),
                buckets: HashMap::new(),
            }),
            forwarder: Forwarder::new(cfg.upstreams.clone(), cfg.upstream_timeout),
            metrics: DnsMetrics::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &DnsConfig {
        &self.cfg
    }

    /// The local records, to register or remove names.
    pub fn records(&self) -> MutexGuard<'_, Records> {
        lock(&self.records)
    }

    /// Answers from local data or the cache if possible.
    pub fn answer_now(&self, packet: &[u8], src: IpAddr, transport: Transport) -> Step {
        let m = &self.metrics;
        DnsMetrics::inc(&m.queries);
        let now = Instant::now();
        if !lock(&self.limiter).allow(src, now) {
            DnsMetrics::inc(&m.rate_limited);
            return Step::Drop;
        }
        if let Some(hit) = self.fast_cache_hit(packet, transport, now) {
            DnsMetrics::inc(&m.cache_hits);
            return Step::Reply(hit);
        }
        let query = match Message::from_vec(packet) {
            Ok(q) => q,
            Err(_) => {
                DnsMetrics::inc(&m.malformed);
                // Answer FORMERR if there is at least a header to answer.
                return match packet.get(..2) {
                    Some(id) if packet.len() >= 12 && packet[2] & 0x80 == 0 => {
                        let id = u16::from_be_bytes([id[0], id[1]]);
                        encode(&Message::error_msg(id, OpCode::Query, ResponseCode::FormErr), MIN_UDP)
                            .map_or(Step::Drop, Step::Reply)
                    }
                    _ => Step::Drop,
                };
            }
        };
        if query.message_type() != MessageType::Query {
            DnsMetrics::inc(&m.malformed);
            return Step::Drop;
        }
        let edns = query.extensions().is_some();
        let max_size = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp if edns => usize::from(query.max_payload().clamp(MIN_UDP as u16, MAX_UDP)),
            Transport::Udp => MIN_UDP,
        };
        let reply = |code: ResponseCode| Step::Reply(self.respond(&query, code, Vec::new(), Vec::new(), max_size));
        if query.op_code() != OpCode::Query {
            return reply(ResponseCode::NotImp);
        }
        let [question] = query.queries() else {
            DnsMetrics::inc(&m.malformed);
            return reply(ResponseCode::FormErr);
        };
        if question.query_class() != DNSClass::IN
            || matches!(question.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return reply(ResponseCode::Refused);
        }
        let name = question.name().to_ascii();
        let local = self.records().lookup(&name);
        match local {
            Local::Address(addr) => {
                DnsMetrics::inc(&m.local_answers);
                let (qtype, ttl) = (question.query_type(), self.cfg.local_ttl);
                let mut answers = Vec::new();
                if let (Some(v4), RecordType::A | RecordType::ANY) = (addr.v4, qtype) {
                    answers.push(Record::from_rdata(question.name().clone(), ttl, RData::A(A(v4))));
                }
                if let (Some(v6), RecordType::AAAA | RecordType::ANY) = (addr.v6, qtype) {
                    answers.push(Record::from_rdata(question.name().clone(), ttl, RData::AAAA(AAAA(v6))));
                }
                let authority = if answers.is_empty() {
                    self.soa_for(&name)
                } else {
                    Vec::new()
                };
                Step::Reply(self.respond(&query, ResponseCode::NoError, answers, authority, max_size))
            }
            Local::NxDomain => {
                DnsMetrics::inc(&m.local_answers);
                Step::Reply(self.respond(
                    &query,
                    ResponseCode::NXDomain,
                    Vec::new(),
                    self.soa_for(&name),
                    max_size,
                ))
            }
            Local::NotLocal => {
                let key: Key = (records_key(&name), question.query_type(), question.query_class(), edns);
                if let Some(mut cached) = lock(&self.cache).get(&key, now) {
                    DnsMetrics::inc(&m.cache_hits);
                    cached.set_id(query.id());
                    cached.set_recursion_desired(query.recursion_desired());
                    return encode(&cached, max_size).map_or(Step::Drop, Step::Reply);
                }
                Step::Forward(Box::new(Pending {
                    query,
                    key,
                    max_size,
                    edns,
                }))
            }
        }
    }

    /// A cache hit served without parsing or encoding a full message.
    fn fast_cache_hit(&self, packet: &[u8], transport: Transport, now: Instant) -> Option<Vec<u8>> {
        let q = crate::wire::question(packet)?;
        if !matches!(self.records().lookup_normalised(&q.name), Local::NotLocal) {
            return None;
        }
        let max = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp if q.edns => usize::from(q.udp_size.clamp(MIN_UDP as u16, MAX_UDP)),
            Transport::Udp => MIN_UDP,
        };
        let key: Key = (q.name, RecordType::from(q.qtype), DNSClass::from(q.qclass), q.edns);
        let mut out = Vec::new();
        lock(&self.cache)
            .get_wire(&key, q.id, q.rd, now, max, &mut out)
            .then_some(out)
    }

    /// Resolves a pending query upstream (SERVFAIL if that fails) and
    /// caches what may be cached.
    pub async fn finish(&self, pending: Box<Pending>) -> Vec<u8> {
        DnsMetrics::inc(&self.metrics.forwarded);
        let mut upstream_query = pending.query.clone();
        // Ask upstream for answers up to MAX_UDP whatever the client said:
        // we never send more over UDP, and bigger ones come over TCP.
        let mut edns = upstream_query.extensions().clone().unwrap_or_default();
        edns.set_max_payload(MAX_UDP);
        upstream_query.set_edns(edns);
        match self.forwarder.forward(&upstream_query).await {
            Ok(mut resp) => {
                if !pending.edns {
                    *resp.extensions_mut() = None;
                }
                let mut stored = resp.clone();
                stored.set_id(0);
                lock(&self.cache).insert(pending.key, &stored, Instant::now());
                resp.set_id(pending.query.id());
                encode(&resp, pending.max_size).unwrap_or_default()
            }
            Err(e) => {
                DnsMetrics::inc(&self.metrics.servfail);
                tracing::debug!(error = %e, "DNS forward failed");
                self.respond(
                    &pending.query,
                    ResponseCode::ServFail,
                    Vec::new(),
                    Vec::new(),
                    pending.max_size,
                )
            }
        }
    }

    /// Both steps: the full answer, or None to stay silent.
    pub async fn answer(&self, packet: &[u8], src: IpAddr, transport: Transport) -> Option<Vec<u8>> {
        match self.answer_now(packet, src, transport) {
            Step::Reply(r) => Some(r),
            Step::Forward(p) => Some(self.finish(p).await),
            Step::Drop => None,
        }
    }

    /// The SOA of the local zone `name` is in, for negative answers.
    fn soa_for(&self, name: &str) -> Vec<Record> {
        let records = self.records();
        let Some(zone) = records.zone_of(name) else {
            return Vec::new();
        };
        let Ok(zone) = Name::from_ascii(format!("{zone}.")) else {
            return Vec::new();
        };
        let mname = Name::from_ascii("ns")
            .ok()
            .and_then(|n| n.append_domain(&zone).ok())
            .unwrap_or_else(|| zone.clone());
        let rname = Name::from_ascii("hostmaster")
            .ok()
            .and_then(|n| n.append_domain(&zone).ok())
            .unwrap_or_else(|| zone.clone());
        let ttl = self.cfg.local_ttl;
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, ttl);
        vec![Record::from_rdata(zone, ttl, RData::SOA(soa))]
    }

    fn respond(
        &self,
        query: &Message,
        code: ResponseCode,
        answers: Vec<Record>,
        authority: Vec<Record>,
        max: usize,
    ) -> Vec<u8> {
        let mut resp = Message::new();
        resp.set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(query.op_code())
            .set_authoritative(code != ResponseCode::ServFail && code != ResponseCode::Refused)
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(true)
            .set_response_code(code);
        let queries: Vec<Query> = query.queries().to_vec();
        resp.add_queries(queries);
        resp.add_answers(answers);
        resp.add_name_servers(authority);
        if query.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP);
            resp.set_edns(edns);
        }
        if code == ResponseCode::ServFail {
            // SERVFAIL is answered but must not look authoritative.
            resp.set_authoritative(false);
        }
        encode(&resp, max).unwrap_or_default()
    }
}

/// The cache's form of a name: lower case, no trailing dot.
fn records_key(name: &str) -> String {
    crate::records::normalise(name)
}

/// Encodes `msg`; if it does not fit in `max` bytes, sends the header and
/// question with TC set so the client retries over TCP.
fn encode(msg: &Message, max: usize) -> Option<Vec<u8>> {
    let bytes = msg.to_vec().ok()?;
    if bytes.len() <= max {
        return Some(bytes);
    }
    let mut short = Message::new();
    short
        .set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_response_code(msg.response_code())
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(msg.recursion_available())
        .set_truncated(true);
    short.add_queries(msg.queries().to_vec());
    short.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Owner;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn reply(server: &DnsServer, packet: &[u8]) -> Message {
        match server.answer_now(packet, IpAddr::from([10, 0, 2, 2]), Transport::Udp) {
            Step::Reply(r) => Message::from_vec(&r).unwrap(),
            _ => panic!("expected an immediate reply"),
        }
    }

    #[test]
    fn local_names_nxdomain_and_nodata() {
        let server = DnsServer::new(DnsConfig::default());
        server
            .records()
            .register("web", Ipv4Addr::new(10, 0, 2, 5), Owner::Static("t".into()))
            .unwrap();
        let r = reply(&server, &query("web.test.", RecordType::A));
        assert_eq!(r.id(), 4242);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.authoritative());
        assert_eq!(r.answers()[0].data(), &RData::A(A(Ipv4Addr::new(10, 0, 2, 5))));
        let r = reply(&server, &query("nope.test.", RecordType::A));
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        assert!(matches!(r.name_servers()[0].data(), RData::SOA(_)));
        let r = reply(&server, &query("web.test.", RecordType::AAAA));
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.answers().is_empty());
        let r = reply(&server, &query("host.containers.internal.", RecordType::A));
        assert_eq!(r.answers()[0].data(), &RData::A(A(Ipv4Addr::new(10, 0, 2, 254))));
    }

    #[test]
    fn bad_input_gets_formerr_refused_or_silence() {
        let server = DnsServer::new(DnsConfig::default());
        let garbage = [0x12u8, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(reply(&server, &garbage).response_code(), ResponseCode::FormErr);
        assert!(matches!(
            server.answer_now(&[1, 2, 3], IpAddr::from([1, 1, 1, 1]), Transport::Udp),
            Step::Drop
        ));
        let r = reply(&server, &query("test.", RecordType::AXFR));
        assert_eq!(r.response_code(), ResponseCode::Refused);
        // A response sent to us is ignored.
        let mut resp = Message::from_vec(&query("x.test.", RecordType::A)).unwrap();
        resp.set_message_type(MessageType::Response);
        assert!(matches!(
            server.answer_now(&resp.to_vec().unwrap(), IpAddr::from([1, 1, 1, 1]), Transport::Udp),
            Step::Drop
        ));
    }

    #[test]
    fn floods_are_rate_limited_per_source() {
        let server = DnsServer::new(DnsConfig {
            rate_limit: 10,
            ..DnsConfig::default()
        });
        let q = query("web.test.", RecordType::A);
        let answered = (0..100)
            .filter(|_| {
                matches!(
                    server.answer_now(&q, IpAddr::from([10, 0, 2, 9]), Transport::Udp),
                    Step::Reply(_)
                )
            })
            .count();
        assert!((15..=25).contains(&answered), "answered {answered}");
        // Another source is unaffected.
        assert!(matches!(
            server.answer_now(&q, IpAddr::from([10, 0, 2, 8]), Transport::Udp),
            Step::Reply(_)
        ));
    }

    #[test]
    fn oversize_udp_answers_are_truncated() {
        let mut m = Message::new();
        m.set_id(1).set_message_type(MessageType::Response);
        m.add_query(Query::query(Name::from_ascii("big.example.").unwrap(), RecordType::A));
        for i in 0..100u8 {
            m.add_answer(Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                60,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        let short = Message::from_vec(&encode(&m, 512).unwrap()).unwrap();
        assert!(short.truncated());
        assert!(short.answers().is_empty());
        assert!(!Message::from_vec(&encode(&m, 65535).unwrap()).unwrap().truncated());
    }
}
