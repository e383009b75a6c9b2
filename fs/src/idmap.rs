//! Owner translation between guest and host ids, done by the file server
//! (virtiofsd's `--translate-uid`/`--translate-gid`, and `ferry run`'s
//! ownership of shares): the caller's ids on every request that creates a
//! file, the ids a guest chowns to, and the owner of every attribute sent
//! back.
//!
//! Written here rather than with fuse-backend-rs's `Vfs` id mapping, which
//! has one bidirectional range; virtiofsd's rules have six kinds and any
//! number of ranges. [`IdMap`] is pure; `translate::Translated` applies two
//! of them (uids, gids) around any `FileSystem`.

/// One translation rule, as virtiofsd spells it (`TYPE:...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `guest:GUEST_BASE:HOST_BASE:COUNT`: guest ids to host ids, 1:1.
    Guest { guest: u32, host: u32, count: u32 },
    /// `host:HOST_BASE:GUEST_BASE:COUNT`: host ids to guest ids, 1:1.
    Host { host: u32, guest: u32, count: u32 },
    /// `squash-guest:GUEST_BASE:HOST_ID:COUNT`: a guest range to one host id.
    SquashGuest { guest: u32, host: u32, count: u32 },
    /// `squash-host:HOST_BASE:GUEST_ID:COUNT`: a host range to one guest id.
    SquashHost { host: u32, guest: u32, count: u32 },
    /// `forbid-guest:GUEST_BASE:COUNT`: the guest may not create files as,
    /// or chown to, these ids (EPERM).
    ForbidGuest { guest: u32, count: u32 },
    /// `map:GUEST_BASE:HOST_BASE:COUNT`: both directions, 1:1.
    Map { guest: u32, host: u32, count: u32 },
}

fn within(id: u32, base: u32, count: u32) -> bool {
    id >= base && u64::from(id) < u64::from(base) + u64::from(count)
}

impl Rule {
    /// Parses one `--translate-uid`/`--translate-gid` value.
    pub fn parse(s: &str) -> Result<Rule, String> {
        let bad = |why: &str| {
            format!("{s:?}: {why} (expected TYPE:A:B:COUNT, e.g. map:1000:0:1, or forbid-guest:BASE:COUNT)")
        };
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let nums: Vec<u32> = parts
            .map(|n| n.parse::<u32>().map_err(|_| bad("not a number")))
            .collect::<Result<_, _>>()?;
        let need = |n: usize| {
            if nums.len() == n {
                Ok(())
            } else {
                Err(bad(&format!("{kind} takes {n} numbers")))
            }
        };
        let rule = match kind {
            "guest" | "host" | "squash-guest" | "squash-host" | "map" => {
                need(3)?;
                let (a, b, count) = (nums[0], nums[1], nums[2]);
                match kind {
                    "guest" => Rule::Guest {
                        guest: a,
                        host: b,
                        count,
                    },
                    "host" => Rule::Host {
                        host: a,
                        guest: b,
                        count,
                    },
                    "squash-guest" => Rule::SquashGuest {
                        guest: a,
                        host: b,
                        count,
                    },
                    "squash-host" => Rule::SquashHost {
                        host: a,
                        guest: b,
                        count,
                    },
                    _ => Rule::Map {
                        guest: a,
                        host: b,
                        count,
                    },
                }
            }
            "forbid-guest" => {
                need(2)?;
                Rule::ForbidGuest {
                    guest: nums[0],
                    count: nums[1],
                }
            }
            _ => {
                return Err(bad(
                    "unknown type; one of guest, host, squash-guest, squash-host, forbid-guest, map",
                ))
            }
        };
        let (base, count, target) = match rule {
            Rule::Guest { guest, count, host } | Rule::Map { guest, count, host } => (guest, count, Some(host)),
            Rule::Host { host, count, guest } => (host, count, Some(guest)),
            Rule::SquashGuest { guest, count, .. } | Rule::ForbidGuest { guest, count } => (guest, count, None),
            Rule::SquashHost { host, count, .. } => (host, count, None),
        };
        let fits = |b: u32| u64::from(b) + u64::from(count) <= 1 << 32;
        if count == 0 || !fits(base) || !target.is_none_or(fits) {
            return Err(bad("the range is empty or runs past 2^32"));
        }
        Ok(rule)
    }
}

/// A list of rules for one kind of id; the first rule that covers an id
/// decides. Ids no rule covers pass unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    pub rules: Vec<Rule>,
}

impl IdMap {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The host id for a guest id; None when the guest may not use it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        for r in &self.rules {
            match *r {
                Rule::Guest { guest, host, count } | Rule::Map { guest, host, count } if within(id, guest, count) => {
                    return Some(host + (id - guest))
                }
                Rule::SquashGuest { guest, host, count } if within(id, guest, count) => return Some(host),
                Rule::ForbidGuest { guest, count } if within(id, guest, count) => return None,
                _ => {}
            }
        }
        Some(id)
    }

    /// The guest id for a host id.
    pub fn to_guest(&self, id: u32) -> u32 {
        for r in &self.rules {
            match *r {
                Rule::Host { host, guest, count } | Rule::Map { guest, host, count } if within(id, host, count) => {
                    return guest + (id - host)
                }
                Rule::SquashHost { host, guest, count } if within(id, host, count) => return guest,
                _ => {}
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_map_like_virtiofsd() {
        let map = |specs: &[&str]| IdMap {
            rules: specs.iter().map(|s| Rule::parse(s).unwrap()).collect(),
        };
        let m = map(&["map:1000:0:1"]);
        assert_eq!((m.to_host(1000), m.to_guest(0)), (Some(0), 1000));
        assert_eq!((m.to_host(5), m.to_guest(5)), (Some(5), 5));
        let m = map(&["guest:0:100000:65536", "host:100000:0:65536"]);
        assert_eq!((m.to_host(7), m.to_guest(100_007)), (Some(100_007), 7));
        let m = map(&["squash-guest:0:1000:4294967295", "squash-host:0:0:4294967295"]);
        assert_eq!((m.to_host(12), m.to_guest(1000)), (Some(1000), 0));
        let m = map(&["forbid-guest:0:1", "map:1:1:10"]);
        assert_eq!((m.to_host(0), m.to_host(3)), (None, Some(3)));
        for bad in [
            "map:1:2",
            "map:a:1:1",
            "swap:1:1:1",
            "map:1:1:0",
            "map:4294967295:0:2",
            "forbid-guest:1:1:1",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }
}
