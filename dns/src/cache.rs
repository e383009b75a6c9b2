//! A response cache keyed by question that honours record TTLs: entries are
//! served with their TTLs counted down and dropped at expiry.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

/// (lower-case name without trailing dot, type, class, client used EDNS)
pub type Key = (String, RecordType, DNSClass, bool);

struct Entry {
    message: Message,
    /// The response encoded with id 0, for the wire-level fast path.
    wire: Vec<u8>,
    /// Where its TTLs are, and their values when stored.
    ttls: Vec<(usize, u32)>,
    stored: Instant,
    ttl: u32,
    /// Insertion number, to tell this entry's record in `order` from a
    /// stale one left by an entry it replaced.
    seq: u64,
}

/// Eviction is O(1) amortised: a full cache drops the oldest insertion
/// (from `order`), and expired entries are swept once per `capacity`
/// inserts. Scanning the whole table on every insert into a full cache
/// (as this once did) made every uncached lookup cost 10,000 entries.
pub struct Cache {
    entries: HashMap<Key, Entry>,
    /// Keys in insertion order with their insertion numbers; may hold
    /// stale records (key since replaced or removed), skipped when popped
    /// and compacted when they outnumber the live ones.
    order: VecDeque<(u64, Key)>,
    next_seq: u64,
    inserts_since_sweep: usize,
    capacity: usize,
    max_ttl: u32,
}

/// Negative answers without an SOA are kept this long.
const DEFAULT_NEGATIVE_TTL: u32 = 30;

/// How long a response may be cached, or None if it must not be.
pub fn cache_ttl(msg: &Message, max_ttl: u32) -> Option<u32> {
    let ttl = match msg.response_code() {
        ResponseCode::NoError if !msg.answers().is_empty() => msg.answers().iter().map(|r| r.ttl()).min()?,
        ResponseCode::NoError | ResponseCode::NXDomain => msg
            .name_servers()
            .iter()
            .find_map(|r| match r.data() {
                RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                _ => None,
            })
            .unwrap_or(DEFAULT_NEGATIVE_TTL),
        _ => return None,
    };
    (ttl > 0).then_some(ttl.min(max_ttl))
}

impl Cache {
    pub fn new(capacity: usize, max_ttl: u32) -> Cache {
        Cache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            inserts_since_sweep: 0,
            capacity: capacity.max(1),
            max_ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, key: Key, message: &Message, now: Instant) {
        let Some(ttl) = cache_ttl(message, self.max_ttl) else {
            return;
        };
        self.inserts_since_sweep += 1;
        if self.inserts_since_sweep >= self.capacity {
            self.inserts_since_sweep = 0;
            self.entries
                .retain(|_, e| now.duration_since(e.stored) < Duration::from_secs(e.ttl.into()));
        }
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let Some((seq, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&oldest);
            }
        }
        if self.order.len() >= 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(seq, k)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
        let mut zero_id = message.clone();
        zero_id.set_id(0);
        let Ok(wire) = zero_id.to_vec() else { return };
        let Some(ttls) = crate::wire::ttl_offsets(&wire) else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        self.entries.insert(
            key,
            Entry {
                message: message.clone(),
                wire,
                ttls,
                stored: now,
                ttl,
                seq,
            },
        );
    }

    /// Writes the cached response for `key` into `out` with `id`, the
    /// client's RD bit and TTLs reduced by its age. False if absent, expired
    /// or larger than `max` (then the caller takes the slow path).
    pub fn get_wire(&mut self, key: &Key, id: u16, rd: bool, now: Instant, max: usize, out: &mut Vec<u8>) -> bool {
        let Some(entry) = self.entries.get(key) else {
            return false;
        };
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            self.entries.remove(key);
            return false;
        }
        if entry.wire.len() > max {
            return false;
        }
        out.clear();
        out.extend_from_slice(&entry.wire);
        out[..2].copy_from_slice(&id.to_be_bytes());
        out[2] = (out[2] & !0x01) | u8::from(rd);
        for &(at, ttl) in &entry.ttls {
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        true
    }

    /// A copy of the cached response with TTLs reduced by its age, or None
    /// if absent or expired.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Message> {
        let entry = self.entries.get(key)?;
        let age = now.duration_since(entry.stored).as_secs();
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            self.entries.remove(key);
            return None;
        }
        let mut msg = entry.message.clone();
        for record in msg.answers_mut().iter_mut() {
            let ttl = record.ttl().saturating_sub(age);
            record.set_ttl(ttl);
        }
        for record in msg.name_servers_mut().iter_mut() {
            let ttl = record.ttl().saturating_sub(age);
            record.set_ttl(ttl);
        }
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::MessageType;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, Record};
    use std::net::Ipv4Addr;

    fn answer(ttl: u32) -> Message {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        let name = Name::from_ascii("example.com.").unwrap();
        m.add_answer(Record::from_rdata(name, ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
        m
    }

    #[test]
    fn ttls_count_down_and_expire() {
        let mut c = Cache::new(10, 86400);
        let key: Key = ("example.com".into(), RecordType::A, DNSClass::IN, false);
        let t0 = Instant::now();
        c.insert(key.clone(), &answer(10), t0);
        let hit = c.get(&key, t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(hit.answers()[0].ttl(), 6);
        let mut wire = Vec::new();
        assert!(c.get_wire(&key, 99, true, t0 + Duration::from_secs(5), 4096, &mut wire));
        let parsed = Message::from_vec(&wire).unwrap();
        assert_eq!(
            (parsed.id(), parsed.recursion_desired(), parsed.answers()[0].ttl()),
            (99, true, 5)
        );
        assert!(!c.get_wire(&key, 1, false, t0, 10, &mut wire), "too big for max");
        assert!(c.get(&key, t0 + Duration::from_secs(10)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn servfail_and_zero_ttl_are_not_cached() {
        let mut c = Cache::new(10, 86400);
        let key: Key = ("example.com".into(), RecordType::A, DNSClass::IN, false);
        let mut fail = answer(10);
        fail.set_response_code(ResponseCode::ServFail);
        c.insert(key.clone(), &fail, Instant::now());
        c.insert(key.clone(), &answer(0), Instant::now());
        assert!(c.is_empty());
    }

    #[test]
    fn capacity_is_bounded() {
        let mut c = Cache::new(3, 86400);
        let now = Instant::now();
        for i in 0..10 {
            c.insert(
                (format!("n{i}"), RecordType::A, DNSClass::IN, false),
                &answer(100),
                now + Duration::from_millis(i),
            );
        }
        assert_eq!(c.len(), 3);
        // The newest three stay, and a replaced key is not evicted twice.
        for i in 7..10 {
            assert!(c
                .get(&(format!("n{i}"), RecordType::A, DNSClass::IN, false), now)
                .is_some());
        }
        for _ in 0..20 {
            c.insert(("n9".into(), RecordType::A, DNSClass::IN, false), &answer(100), now);
        }
        assert_eq!(c.len(), 3, "re-inserting one key keeps the others");
        assert!(c.order.len() <= 2 * 3, "stale order records are compacted");
        // Expired entries are swept, not only the oldest dropped.
        let later = now + Duration::from_secs(200);
        for i in 0..3 {
            c.insert(
                (format!("m{i}"), RecordType::A, DNSClass::IN, false),
                &answer(100),
                later,
            );
        }
        assert_eq!(c.len(), 3);
        assert!(c
            .get(&("m0".into(), RecordType::A, DNSClass::IN, false), later)
            .is_some());
    }
}
