//! Wire-level views used on the cache-hit fast path: the question of a
//! query without a full parse, and where the TTLs of a response are.
//! Bounds-checked everywhere; malformed input yields None.

/// The question of a query, with the name lower-cased and dotted.
pub struct QuestionView {
    pub id: u16,
    pub rd: bool,
    /// Lower-case name without the trailing dot ("" for the root).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// An OPT record is present (EDNS).
    pub edns: bool,
    /// The client's EDNS UDP payload size, if any.
    pub udp_size: u16,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Skips a (possibly compressed) name starting at `at`; returns the offset after it.
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *b.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                b.get(at + 1)?;
                return Some(at + 2);
            }
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
    None
}

/// Parses a standard query with exactly one question and no answer or
/// authority records (the only shape the fast path serves).
pub fn question(b: &[u8]) -> Option<QuestionView> {
    let id = u16_at(b, 0)?;
    let flags = u16_at(b, 2)?;
    // QR=0, opcode 0.
    if flags & 0x8000 != 0 || flags & 0x7800 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (u16_at(b, 4)?, u16_at(b, 6)?, u16_at(b, 8)?, u16_at(b, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut name = String::new();
    let mut at = 12;
    loop {
        let len = usize::from(*b.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 || name.len() + len > 253 {
            return None;
        }
        let label = b.get(at + 1..at + 1 + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &c in label {
            // Only plain host-name bytes; anything else takes the slow path.
            if !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
                return None;
            }
            name.push(char::from(c.to_ascii_lowercase()));
        }
        at += 1 + len;
    }
    let qtype = u16_at(b, at)?;
    let qclass = u16_at(b, at + 2)?;
    at += 4;
    let (mut edns, mut udp_size) = (false, 512);
    if ar == 1 {
        // Must be an OPT record with the root name.
        if *b.get(at)? != 0 || u16_at(b, at + 1)? != 41 {
            return None;
        }
        edns = true;
        udp_size = u16_at(b, at + 3)?;
        let rdlen = usize::from(u16_at(b, at + 9)?);
        at += 11 + rdlen;
    }
    if at != b.len() {
        return None;
    }
    Some(QuestionView {
        id,
        rd: flags & 0x0100 != 0,
        name,
        qtype,
        qclass,
        edns,
        udp_size,
    })
}

/// Offsets and values of the TTL fields of every answer and authority
/// record (OPT's "TTL" is EDNS flags, not a TTL, and is skipped).
pub fn ttl_offsets(b: &[u8]) -> Option<Vec<(usize, u32)>> {
    let qd = u16_at(b, 4)?;
    let rr = usize::from(u16_at(b, 6)?) + usize::from(u16_at(b, 8)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(b, at)? + 4;
    }
    let mut out = Vec::with_capacity(rr);
    for _ in 0..rr {
        at = skip_name(b, at)?;
        let rtype = u16_at(b, at)?;
        let ttl = u32::from_be_bytes(b.get(at + 4..at + 8)?.try_into().ok()?);
        if rtype != 41 {
            out.push((at + 4, ttl));
        }
        at += 10 + usize::from(u16_at(b, at + 8)?);
        if at > b.len() {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    #[test]
    fn reads_the_question_and_ttls() {
        let mut q = Message::new();
        q.set_id(77).set_recursion_desired(true);
        q.add_query(Query::query(
            Name::from_ascii("WWW.Example.com.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        q.set_edns(e);
        let v = question(&q.to_vec().unwrap()).unwrap();
        assert_eq!(
            (v.id, v.rd, v.name.as_str(), v.qtype, v.qclass, v.edns, v.udp_size),
            (77, true, "www.example.com", 1, 1, true, 1232)
        );

        let mut r = q.clone();
        let name = Name::from_ascii("www.example.com.").unwrap();
        r.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A([192, 0, 2, 1].into())),
        ));
        r.add_answer(Record::from_rdata(name, 20, RData::A(A([192, 0, 2, 2].into()))));
        let bytes = r.to_vec().unwrap();
        let ttls: Vec<u32> = ttl_offsets(&bytes).unwrap().into_iter().map(|(_, t)| t).collect();
        assert_eq!(ttls, [300, 20]);
    }

    #[test]
    fn rejects_what_the_fast_path_does_not_serve() {
        assert!(question(&[]).is_none());
        assert!(question(&[0; 12]).is_none()); // no question
        let mut q = Message::new();
        q.add_query(Query::query(Name::from_ascii("a.b.").unwrap(), RecordType::A));
        let mut b = q.to_vec().unwrap();
        b.push(0); // trailing garbage
        assert!(question(&b).is_none());
        assert!(ttl_offsets(&[0, 0, 0, 0, 0, 1, 0, 1]).is_none());
    }
}
