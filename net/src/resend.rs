//! Drops the gateway stack's spurious resends toward guests.
//!
//! Why this exists: smoltcp 0.12 restarts a connection's retransmission
//! timer only when an ACK covers everything sent (`ack_all`), not on every
//! ACK of new data as RFC 6298 (5.3) asks, and when the timer expires it
//! resends the whole window (go-back-N). Toward a guest that drains slower
//! than a window's worth per RTO — a TCG guest behind the QEMU stream front
//! end at MTU 1500 — ACKs keep advancing but never catch up, so the timer
//! expires every few tens of milliseconds and the guest receives most bytes
//! twice (ferry's `tx_bytes` was 2.8 × the file, the guest counted
//! thousands of `TCPDSACKOldSent`). smoltcp has no knob for this and ferry
//! does not carry a patched copy, so the fix sits at the edge instead.
//!
//! The link from the stack to a guest is ferry's own: it loses nothing
//! except frames it counts as dropped. A resend is therefore only needed if
//! the guest says something is missing. A segment whose bytes were all
//! sent before is dropped here while the guest's cumulative ACK advanced
//! within [`HOLD`] and the guest has not sent duplicate ACKs (its way of
//! reporting a hole); otherwise it goes out. So a real loss is repaired
//! after the guest's duplicate ACKs (smoltcp's fast retransmit) or at worst
//! [`HOLD`] after progress stopped — Linux's own minimum RTO — while a
//! merely slow guest sees each byte once. SYN, FIN, RST and segments
//! without payload always pass. A flow the table does not know (new, or
//! evicted by a flood) is never filtered.
//!
//! The same per-flow view of sequence numbers also tells when a flow has
//! gone quiet with nothing of the guest's held out of order, so its socket
//! buffers' pages can be given back ([`ResendFilter::quiet`], used by
//! `Stack::tcp_trim_quiet`).
//!
//! Pure logic over parsed header fields with time passed in; the switch
//! calls it with the segments it sends and the stack with the guests'.

use std::net::IpAddr;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpPacket;

use crate::bounded::BoundedMap;

/// How long after the guest's ACK last advanced a resend is still held back.
pub const HOLD: Duration = Duration::from_millis(200);

/// Duplicate ACKs from the guest after which resends pass at once (one
/// with a selective ACK past its cumulative ACK counts as all of them).
const DUP_ACKS: u8 = 2;

/// (guest address, guest port, remote address, remote port): the guest's
/// view, as in the TCP flow table.
pub type Key = (IpAddr, u16, IpAddr, u16);

/// The fields of a TCP header the filter reads.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub seq: u32,
    pub ack: Option<u32>,
    pub window: u16,
    pub payload_len: usize,
    /// SYN, FIN or RST set.
    pub control: bool,
    pub syn: bool,
    pub fin: bool,
    /// A SACK block past the ACK: the sender has later data, so something
    /// before it is missing.
    pub hole: bool,
}

impl Segment {
    /// A TCP header's fields with its (source, destination) ports; None if
    /// it is too short.
    pub fn parse(tcp: &[u8]) -> Option<((u16, u16), Segment)> {
        Segment::of(&TcpPacket::new_checked(tcp).ok()?)
    }

    /// The same from a header already checked (`TcpPacket::new_checked`).
    pub fn of(t: &TcpPacket<&[u8]>) -> Option<((u16, u16), Segment)> {
        let payload_len = t.payload().len();
        let ack = t.ack().then(|| t.ack_number().0 as u32);
        let hole = ack.is_some_and(|ack| {
            let ranges = t.selective_ack_ranges().unwrap_or_default();
            ranges.iter().flatten().any(|&(left, _)| before(ack, left))
        });
        let seg = Segment {
            seq: t.seq_number().0 as u32,
            ack,
            hole,
            window: t.window_len(),
            payload_len,
            control: t.syn() || t.fin() || t.rst(),
            syn: t.syn(),
            fin: t.fin(),
        };
        Some(((t.src_port(), t.dst_port()), seg))
    }

    /// Sequence space the segment takes: its payload, plus one each for
    /// SYN and FIN.
    fn seq_len(&self) -> u32 {
        self.payload_len as u32 + u32::from(self.syn) + u32::from(self.fin)
    }
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    /// One past the highest sequence number sent to the guest (None: no
    /// data sent yet).
    sent_max: Option<u32>,
    /// The guest's cumulative ACK and advertised window, as last seen.
    acked: Option<(u32, u16)>,
    /// When the guest's ACK last advanced (or the flow was first seen).
    progress_at: Instant,
    /// Duplicate ACKs since it last advanced.
    dup_acks: u8,
    /// One past the highest sequence number the guest sent (SYN and FIN
    /// count), and the stack's latest ACK to it: equal means the stack
    /// holds none of the guest's data out of order.
    guest_end: Option<u32>,
    stack_ack: Option<u32>,
    /// When data last moved either way, and whether the flow's buffers
    /// were given back since (see [`ResendFilter::quiet`]).
    active_at: Instant,
    trimmed: bool,
}

impl Flow {
    fn new(now: Instant) -> Flow {
        Flow {
            sent_max: None,
            acked: None,
            progress_at: now,
            dup_acks: 0,
            guest_end: None,
            stack_ack: None,
            active_at: now,
            trimmed: false,
        }
    }
}

pub struct ResendFilter {
    flows: BoundedMap<Key, Flow>,
    /// Resends dropped, since start.
    pub suppressed: u64,
}

/// `a` is before `b` in sequence space.
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The later of two sequence numbers.
fn later(a: Option<u32>, b: u32) -> u32 {
    a.filter(|&a| !before(a, b)).unwrap_or(b)
}

/// How long a flow moves no data before [`ResendFilter::quiet`] offers it.
pub const QUIET: Duration = Duration::from_secs(1);

impl ResendFilter {
    pub fn new(max_flows: usize) -> ResendFilter {
        ResendFilter {
            flows: BoundedMap::new(max_flows),
            suppressed: 0,
        }
    }

    fn flow(&mut self, key: Key, now: Instant) -> &mut Flow {
        if !self.flows.contains_key(&key) {
            self.flows.insert(key, Flow::new(now));
        }
        self.flows.get_mut(&key).expect("just inserted")
    }

    /// A segment the guest sent on flow `key`.
    pub fn from_guest(&mut self, key: Key, seg: &Segment, now: Instant) {
        let flow = self.flow(key, now);
        let end = seg.seq.wrapping_add(seg.seq_len());
        flow.guest_end = Some(later(flow.guest_end, end));
        if seg.payload_len > 0 {
            flow.active_at = now;
            flow.trimmed = false;
        }
        let Some(ack) = seg.ack else { return };
        match flow.acked {
            Some((last, _)) if before(last, ack) => {
                flow.acked = Some((ack, seg.window));
                flow.progress_at = now;
                // Selective ACKs say exactly that something is missing.
                flow.dup_acks = if seg.hole { DUP_ACKS } else { 0 };
            }
            Some(_) if seg.hole => flow.dup_acks = DUP_ACKS,
            // RFC 5681's duplicate ACK: nothing new, same window, data outstanding.
            Some((last, window))
                if last == ack
                    && window == seg.window
                    && seg.payload_len == 0
                    && !seg.control
                    && flow.sent_max.is_some_and(|m| before(ack, m)) =>
            {
                flow.dup_acks = flow.dup_acks.saturating_add(1);
            }
            Some(_) => {}
            None => {
                flow.acked = Some((ack, seg.window));
                flow.progress_at = now;
            }
        }
    }

    /// Whether a segment the stack built for the guest on flow `key` goes
    /// out (false: a resend the guest does not need).
    pub fn to_guest(&mut self, key: Key, seg: &Segment, now: Instant) -> bool {
        let flow = self.flow(key, now);
        if let Some(ack) = seg.ack {
            flow.stack_ack = Some(ack);
        }
        if seg.payload_len == 0 {
            return true;
        }
        flow.active_at = now;
        flow.trimmed = false;
        let end = seg.seq.wrapping_add(seg.payload_len as u32);
        let resend = flow.sent_max.is_some_and(|m| !before(m, end));
        flow.sent_max = Some(later(flow.sent_max, end));
        if !resend || seg.control {
            return true;
        }
        let healthy = flow.dup_acks < DUP_ACKS && now - flow.progress_at < HOLD;
        if healthy {
            self.suppressed += 1;
        }
        !healthy
    }

    /// A flow that has moved no data for [`QUIET`] and was not offered
    /// since: returns whether the stack holds none of the guest's data out
    /// of order (so an empty receive buffer holds nothing at all), and
    /// marks it offered until data moves again. None otherwise.
    pub fn quiet(&mut self, key: &Key, now: Instant) -> Option<bool> {
        let flow = self.flows.get_mut(key)?;
        if flow.trimmed || now - flow.active_at < QUIET {
            return None;
        }
        flow.trimmed = true;
        Some(flow.guest_end.is_some() && flow.guest_end == flow.stack_ack)
    }

    /// The flow ended.
    pub fn forget(&mut self, key: &Key) {
        self.flows.remove(key);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = (
        IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 2, 15)),
        40000,
        IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 2, 2)),
        80,
    );

    fn data(seq: u32, len: usize) -> Segment {
        Segment {
            seq,
            ack: Some(1),
            window: 100,
            payload_len: len,
            control: false,
            syn: false,
            fin: false,
            hole: false,
        }
    }

    fn ack(n: u32) -> Segment {
        Segment {
            seq: 1,
            ack: Some(n),
            window: 100,
            payload_len: 0,
            control: false,
            syn: false,
            fin: false,
            hole: false,
        }
    }

    fn ms(n: i64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn resends_of_a_guest_that_keeps_acking_are_dropped() {
        let mut f = ResendFilter::new(16);
        for i in 0..10 {
            assert!(f.to_guest(KEY, &data(1000 + i * 100, 100), ms(0)));
        }
        f.from_guest(KEY, &ack(1300), ms(5));
        // The stack's timer fires and it goes back to the last ACK.
        assert!(!f.to_guest(KEY, &data(1300, 100), ms(20)));
        assert!(!f.to_guest(KEY, &data(1900, 100), ms(20)));
        // New data still goes, including a segment that straddles.
        assert!(f.to_guest(KEY, &data(1950, 100), ms(20)));
        assert!(f.to_guest(KEY, &data(2050, 100), ms(20)));
        assert_eq!(f.suppressed, 2);
    }

    #[test]
    fn a_hole_the_guest_reports_is_resent_at_once() {
        let mut f = ResendFilter::new(16);
        for i in 0..5 {
            f.to_guest(KEY, &data(1000 + i * 100, 100), ms(0));
        }
        f.from_guest(KEY, &ack(1100), ms(1));
        // 1100 was lost: the guest repeats its ACK for each later segment.
        f.from_guest(KEY, &ack(1100), ms(2));
        assert!(
            !f.to_guest(KEY, &data(1100, 100), ms(2)),
            "one duplicate is not yet a hole"
        );
        f.from_guest(KEY, &ack(1100), ms(3));
        assert!(f.to_guest(KEY, &data(1100, 100), ms(3)));
        // Once it advances, the flow is healthy again.
        f.from_guest(KEY, &ack(1500), ms(4));
        assert!(!f.to_guest(KEY, &data(1400, 100), ms(5)));
        // One ACK with a selective ACK past it is enough, even as it advances.
        f.to_guest(KEY, &data(1500, 300), ms(5));
        f.from_guest(
            KEY,
            &Segment {
                hole: true,
                ..ack(1600)
            },
            ms(6),
        );
        assert!(f.to_guest(KEY, &data(1600, 100), ms(6)));
        f.from_guest(KEY, &ack(1800), ms(7));
        assert!(!f.to_guest(KEY, &data(1700, 100), ms(7)));
    }

    #[test]
    fn selective_acks_are_read_from_the_header() {
        // A pure ACK of 1000 with one SACK block 2000-3000 (NOP NOP SACK).
        let mut tcp = vec![0u8; 20];
        tcp[4..8].copy_from_slice(&5u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = 0x10;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        tcp.extend_from_slice(&[1, 1, 5, 10]);
        tcp.extend_from_slice(&2000u32.to_be_bytes());
        tcp.extend_from_slice(&3000u32.to_be_bytes());
        let (_, seg) = Segment::parse(&tcp).unwrap();
        assert!(seg.hole && seg.ack == Some(1000) && seg.payload_len == 0);
        // A D-SACK (a block below the ACK) is not a hole.
        tcp[24..28].copy_from_slice(&500u32.to_be_bytes());
        tcp[28..32].copy_from_slice(&600u32.to_be_bytes());
        assert!(!Segment::parse(&tcp).unwrap().1.hole);
        assert!(Segment::parse(&tcp[..10]).is_none());
    }

    #[test]
    fn without_progress_resends_pass_after_the_hold() {
        let mut f = ResendFilter::new(16);
        f.to_guest(KEY, &data(1000, 100), ms(0));
        f.from_guest(KEY, &ack(1000), ms(1));
        assert!(!f.to_guest(KEY, &data(1000, 100), ms(150)));
        assert!(f.to_guest(KEY, &data(1000, 100), ms(1 + 200)));
        // A window update is not a duplicate ACK; no ACK at all never counts.
        let mut f = ResendFilter::new(16);
        f.to_guest(KEY, &data(1000, 100), ms(0));
        f.from_guest(KEY, &ack(1000), ms(0));
        for w in 0..4 {
            f.from_guest(
                KEY,
                &Segment {
                    window: 200 + w,
                    ..ack(1000)
                },
                ms(1),
            );
        }
        f.from_guest(KEY, &Segment { ack: None, ..ack(1000) }, ms(1));
        assert!(!f.to_guest(KEY, &data(1000, 100), ms(2)));
    }

    #[test]
    fn control_segments_unknown_flows_and_wraparound() {
        let mut f = ResendFilter::new(1);
        let fin = Segment {
            control: true,
            ..data(1000, 100)
        };
        assert!(f.to_guest(KEY, &data(u32::MAX - 50, 100), ms(0)));
        f.from_guest(KEY, &ack(u32::MAX - 50), ms(0));
        assert!(!f.to_guest(KEY, &data(u32::MAX - 50, 100), ms(1)));
        assert!(f.to_guest(KEY, &data(49, 100), ms(1)), "new data past the wrap");
        assert!(f.to_guest(KEY, &fin, ms(1)));
        assert!(f.to_guest(KEY, &data(49, 0), ms(1)));
        // A second flow evicts the first (bound 1): it is no longer filtered.
        let other = (KEY.0, 40001, KEY.2, KEY.3);
        f.to_guest(other, &data(5, 10), ms(1));
        assert!(f.to_guest(KEY, &data(u32::MAX - 50, 100), ms(2)));
        assert_eq!(f.len(), 1);
        f.forget(&KEY);
        assert!(f.is_empty());
    }
    #[test]
    fn quiet_flows_are_offered_once_and_say_whether_the_guests_data_is_all_in() {
        let mut f = ResendFilter::new(16);
        let syn = Segment {
            seq: 99,
            ack: None,
            syn: true,
            control: true,
            ..ack(0)
        };
        f.from_guest(KEY, &syn, ms(0));
        // The stack's SYN-ACK acknowledges the SYN; nothing else moved.
        f.to_guest(
            KEY,
            &Segment {
                syn: true,
                control: true,
                ack: Some(100),
                ..data(5000, 0)
            },
            ms(0),
        );
        assert_eq!(f.quiet(&KEY, ms(500)), None, "not quiet for long enough");
        assert_eq!(f.quiet(&KEY, ms(1000)), Some(true));
        assert_eq!(f.quiet(&KEY, ms(3000)), None, "offered once until data moves");
        // Guest data the stack has not acknowledged (held out of order, or
        // its ACK still delayed): the receive side must be kept.
        f.from_guest(
            KEY,
            &Segment {
                seq: 200,
                ..data(0, 50)
            },
            ms(3000),
        );
        assert_eq!(f.quiet(&KEY, ms(3500)), None, "data just moved");
        assert_eq!(f.quiet(&KEY, ms(4000)), Some(false));
        f.from_guest(
            KEY,
            &Segment {
                seq: 100,
                ..data(0, 100)
            },
            ms(4000),
        );
        f.to_guest(
            KEY,
            &Segment {
                ack: Some(250),
                ..data(5001, 10)
            },
            ms(4000),
        );
        assert_eq!(f.quiet(&KEY, ms(5000)), Some(true));
        // A FIN counts as one more.
        f.from_guest(
            KEY,
            &Segment {
                seq: 250,
                fin: true,
                control: true,
                ..data(0, 0)
            },
            ms(5000),
        );
        f.to_guest(
            KEY,
            &Segment {
                ack: Some(250),
                ..data(5011, 0)
            },
            ms(5000),
        );
        f.to_guest(
            KEY,
            &Segment {
                ack: Some(250),
                ..data(5011, 1)
            },
            ms(5000),
        );
        assert_eq!(f.quiet(&KEY, ms(6000)), Some(false));
        assert_eq!(f.quiet(&(KEY.0, 1, KEY.2, KEY.3), ms(6000)), None, "unknown flow");
    }
}
