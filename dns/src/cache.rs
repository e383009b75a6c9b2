//! A response cache keyed by question that honours record TTLs: entries are
//! served with their TTLs counted down and dropped at expiry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

/// (lower-case name, type, class)
pub type Key = (String, RecordType, DNSClass);

struct Entry {
    message: Message,
    stored: Instant,
    ttl: u32,
}

pub struct Cache {
    entries: HashMap<Key, Entry>,
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
            capacity,
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
        if self.entries.len() >= self.capacity {
            self.entries
                .retain(|_, e| now.duration_since(e.stored) < Duration::from_secs(e.ttl.into()));
            if self.entries.len() >= self.capacity {
                // Still full of live entries: drop the oldest.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.stored)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                message: message.clone(),
                stored: now,
                ttl,
            },
        );
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
        let key: Key = ("example.com.".into(), RecordType::A, DNSClass::IN);
        let t0 = Instant::now();
        c.insert(key.clone(), &answer(10), t0);
        let hit = c.get(&key, t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(hit.answers()[0].ttl(), 6);
        assert!(c.get(&key, t0 + Duration::from_secs(10)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn servfail_and_zero_ttl_are_not_cached() {
        let mut c = Cache::new(10, 86400);
        let key: Key = ("example.com.".into(), RecordType::A, DNSClass::IN);
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
                (format!("n{i}."), RecordType::A, DNSClass::IN),
                &answer(100),
                now + Duration::from_millis(i),
            );
        }
        assert_eq!(c.len(), 3);
    }
}
