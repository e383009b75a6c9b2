//! DNS counters.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct DnsMetrics {
    /// Messages received.
    pub queries: AtomicU64,
    /// Answered from local zones or built-in names.
    pub local_answers: AtomicU64,
    /// Answered from the cache.
    pub cache_hits: AtomicU64,
    /// Sent upstream.
    pub forwarded: AtomicU64,
    /// Upstream failed: answered SERVFAIL.
    pub servfail: AtomicU64,
    /// Unparseable or not a query.
    pub malformed: AtomicU64,
    /// Dropped by the per-source rate limit.
    pub rate_limited: AtomicU64,
}

impl DnsMetrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "dns_queries {} dns_local_answers {} dns_cache_hits {} dns_forwarded {} dns_servfail {} dns_malformed {} dns_rate_limited {}",
            get(&self.queries),
            get(&self.local_answers),
            get(&self.cache_hits),
            get(&self.forwarded),
            get(&self.servfail),
            get(&self.malformed),
            get(&self.rate_limited)
        )
    }
}
