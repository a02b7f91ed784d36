//! Order gate: the latched trading state of every restricted scope, read lock-free on the
//! order path.
//!
//! The gate owns the one rule of scope matching: a restriction of scope S covers an order
//! when every field S sets equals the order's (the firm scope sets none and covers every
//! order); an order is under the most restrictive state of the scopes covering it.
//!
//! The restricted scopes are an immutable snapshot behind an [`ArcSwap`]: `decide` loads it
//! (lock-free, no allocation, no write to shared memory beyond arc-swap's debt slot), a stop
//! or reset publishes a new one with `rcu` (a compare-and-swap loop: no lock, so a stop from a
//! signal handler or a stop handler can never wait for another writer). arc-swap frees a
//! replaced snapshot once the last reader drops its guard, so memory is bounded by the
//! scopes restricted at once, whatever the number of halts and resets.
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Orders pass.
pub const ACTIVE: u8 = 0;
/// Only orders that reduce the position pass.
pub const REDUCING: u8 = 1;
/// No order passes.
pub const HALTED: u8 = 2;

/// What a halt applies to; `None` fields match any order. All `None`: the firm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ScopeKey {
    /// Account.
    pub account: Option<Box<str>>,
    /// Strategy.
    pub strategy: Option<Box<str>>,
    /// Instrument id.
    pub symbol_id: Option<u32>,
    /// Venue.
    pub venue: Option<Box<str>>,
}

/// An order's attributes, borrowed (the hot path allocates nothing). `None`: the order has no
/// such attribute, and a scope that sets the field does not cover it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderScope<'a> {
    /// Account.
    pub account: Option<&'a str>,
    /// Strategy.
    pub strategy: Option<&'a str>,
    /// Instrument id.
    pub symbol_id: Option<u32>,
    /// Venue.
    pub venue: Option<&'a str>,
}

impl ScopeKey {
    /// True for the firm scope (no field set).
    pub fn is_firm(&self) -> bool {
        self.account.is_none()
            && self.strategy.is_none()
            && self.symbol_id.is_none()
            && self.venue.is_none()
    }

    /// Does a restriction of this scope apply to `order`?
    #[inline]
    pub fn covers(&self, order: &OrderScope<'_>) -> bool {
        fn field(want: &Option<Box<str>>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(w) => have == Some(&**w),
            }
        }
        field(&self.account, order.account)
            && field(&self.strategy, order.strategy)
            && self.symbol_id.is_none_or(|s| order.symbol_id == Some(s))
            && field(&self.venue, order.venue)
    }
}

/// A restriction source outside the process's own latch (the control plane's shared table):
/// consulted by `decide` after the own snapshot. Must be lock-free, allocation-free and
/// syscall-free, and fail closed (HALTED) when it cannot read its state.
pub trait ExternalRestrictions: Send + Sync {
    /// (state, scope id of the restriction that applies) for `order`.
    fn state_for(&self, order: &OrderScope<'_>) -> (u8, u64);
}

/// One restricted scope in a snapshot.
#[derive(Debug, Clone)]
pub struct Restriction {
    /// The scope.
    pub scope: ScopeKey,
    /// Its id in records (`c`); 0 for the firm.
    pub scope_id: u64,
    /// REDUCING or HALTED.
    pub state: u8,
    /// Generation of the latest stop of this scope: a reset lifts the restriction only if no
    /// stop of the scope came after the reset began (see [`Gate::lift`]).
    pub generation: u64,
}

/// Why [`Gate::lift`] left a restriction in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiftError {
    /// The scope is not restricted.
    NotRestricted,
    /// A stop of the scope arrived after the reset began: the newer halt stands.
    Superseded,
}

struct External(Box<dyn ExternalRestrictions>);

/// The order gate.
pub struct Gate {
    /// Restricted scopes (never contains ACTIVE entries).
    snapshot: ArcSwap<Vec<Restriction>>,
    /// Source of restriction generations (only grows).
    generation: AtomicU64,
    /// Never below the number of entries in `snapshot`: writers add before they insert and
    /// subtract after they remove, so `0` proves the snapshot empty and `allows` can answer
    /// without loading it (one load on the common path).
    restricted: AtomicUsize,
    external: ArcSwapOption<External>,
    /// An external source is attached (checked with `restricted` on the common path).
    has_external: AtomicBool,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A gate with nothing restricted.
    pub fn new() -> Gate {
        Gate {
            snapshot: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(1),
            restricted: AtomicUsize::new(0),
            external: ArcSwapOption::empty(),
            has_external: AtomicBool::new(false),
        }
    }

    /// The state `order` is under and the id of the scope that puts it there. `None`: an
    /// order with no attributes (only the firm scope covers it).
    #[inline]
    pub fn decide(&self, order: &OrderScope<'_>) -> (u8, u64) {
        let own = self.snapshot.load();
        let mut best = (ACTIVE, 0u64);
        for r in own.iter() {
            if r.state > best.0 && r.scope.covers(order) {
                best = (r.state, r.scope_id);
            }
        }
        if best.0 < HALTED {
            if let Some(ext) = &*self.external.load() {
                let theirs = ext.0.state_for(order);
                if theirs.0 > best.0 {
                    best = theirs;
                }
            }
        }
        best
    }

    /// True when nothing at all is restricted (the common case, checked first by `allows`):
    /// two loads, no snapshot.
    #[inline]
    pub fn is_clear(&self) -> bool {
        self.restricted.load(Ordering::SeqCst) == 0 && !self.has_external.load(Ordering::SeqCst)
    }

    /// Raises `scope` to at least `target` (never lowers it). Returns (old state, new state,
    /// generation of this stop). Lock-free: safe from a signal handler or a stop handler.
    pub fn restrict(&self, scope: &ScopeKey, scope_id: u64, target: u8) -> (u8, u8, u64) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel);
        let mut result = (ACTIVE, target, generation);
        self.restricted.fetch_add(1, Ordering::SeqCst); // before the entry can be seen
        self.snapshot.rcu(|cur| {
            let mut next = Vec::with_capacity(cur.len() + 1);
            let mut old = ACTIVE;
            for r in cur.iter() {
                if r.scope_id == scope_id && r.scope == *scope {
                    old = r.state;
                } else {
                    next.push(r.clone());
                }
            }
            let new = old.max(target);
            next.push(Restriction {
                scope: scope.clone(),
                scope_id,
                state: new,
                generation,
            });
            result = (old, new, generation);
            next
        });
        if result.0 != ACTIVE {
            self.restricted.fetch_sub(1, Ordering::SeqCst); // replaced, not added
        }
        result
    }

    /// The generation of `scope_id`'s restriction, if it is restricted.
    pub fn generation_of(&self, scope_id: u64) -> Option<(u8, u64)> {
        self.snapshot
            .load()
            .iter()
            .find(|r| r.scope_id == scope_id)
            .map(|r| (r.state, r.generation))
    }

    /// Lifts `scope_id` if its restriction is still the one of generation `generation` (no
    /// stop of the scope since the reset read it). Returns the state it had.
    pub fn lift(&self, scope_id: u64, generation: u64) -> Result<u8, LiftError> {
        let mut result = Err(LiftError::NotRestricted);
        self.snapshot.rcu(|cur| {
            match cur.iter().find(|r| r.scope_id == scope_id) {
                None => result = Err(LiftError::NotRestricted),
                Some(r) if r.generation != generation => result = Err(LiftError::Superseded),
                Some(r) => {
                    result = Ok(r.state);
                    return cur
                        .iter()
                        .filter(|r| r.scope_id != scope_id)
                        .cloned()
                        .collect();
                }
            }
            (**cur).clone()
        });
        if result.is_ok() {
            self.restricted.fetch_sub(1, Ordering::SeqCst); // after the entry is gone
        }
        result
    }

    /// Replaces every restriction at once (restore at start).
    pub fn replace_all(&self, restrictions: Vec<(ScopeKey, u64, u8)>) {
        let next: Vec<Restriction> = restrictions
            .into_iter()
            .filter(|(_, _, state)| *state != ACTIVE)
            .map(|(scope, scope_id, state)| Restriction {
                scope,
                scope_id,
                state: state.min(HALTED),
                generation: self.generation.fetch_add(1, Ordering::AcqRel),
            })
            .collect();
        self.restricted.fetch_add(next.len(), Ordering::SeqCst);
        let old = self.snapshot.swap(Arc::new(next));
        self.restricted.fetch_sub(old.len(), Ordering::SeqCst);
    }

    /// The restricted scopes now.
    pub fn restrictions(&self) -> Vec<Restriction> {
        self.snapshot.load().to_vec()
    }

    /// Consults `ext` (the control plane) after the own snapshot; `None` detaches it.
    pub fn attach(&self, ext: Option<Box<dyn ExternalRestrictions>>) {
        let attached = ext.is_some();
        if attached {
            self.has_external.store(true, Ordering::SeqCst);
        }
        self.external.store(ext.map(|e| Arc::new(External(e))));
        if !attached {
            self.has_external.store(false, Ordering::SeqCst);
        }
    }
}

/// Counts denials and rate-limits their audit records.
///
/// `total` only grows. `next_ns` is the earliest time the next audit may happen; the thread
/// that moves it forward (compare-exchange) owns that audit and reports the denials since the
/// previous one (`audited` keeps the total already reported, moved forward with fetch_max so a
/// late auditor never reports a count twice).
pub struct DenialLimiter {
    total: AtomicU64,
    audited: AtomicU64,
    next_ns: AtomicU64,
    interval_ns: u64,
}

impl DenialLimiter {
    /// At most one audit per `interval_ns`.
    pub fn new(interval_ns: u64) -> Self {
        Self {
            total: AtomicU64::new(0),
            audited: AtomicU64::new(0),
            next_ns: AtomicU64::new(0),
            interval_ns,
        }
    }

    /// Counts one denial at `now_ns` (any monotonic clock); returns the number of denials to
    /// write in an audit record when one is due, else None.
    #[inline]
    pub fn deny(&self, now_ns: u64) -> Option<u64> {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let next = self.next_ns.load(Ordering::Relaxed);
        if now_ns < next {
            return None;
        }
        let due = now_ns.saturating_add(self.interval_ns);
        if self
            .next_ns
            .compare_exchange(next, due, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let prev = self.audited.fetch_max(total, Ordering::Relaxed);
        let n = total.saturating_sub(prev);
        (n > 0).then_some(n)
    }

    /// Denials counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(strategy: Option<&str>, symbol: Option<u32>) -> ScopeKey {
        ScopeKey {
            strategy: strategy.map(Into::into),
            symbol_id: symbol,
            ..ScopeKey::default()
        }
    }

    const ORDER: OrderScope<'static> = OrderScope {
        account: Some("A1"),
        strategy: Some("mm"),
        symbol_id: Some(7),
        venue: Some("XEUR"),
    };

    #[test]
    fn a_scope_covers_orders_matching_every_field_it_sets() {
        assert!(ScopeKey::default().covers(&ORDER));
        assert!(ScopeKey::default().covers(&OrderScope::default()));
        assert!(key(Some("mm"), None).covers(&ORDER));
        assert!(!key(Some("arb"), None).covers(&ORDER));
        assert!(key(Some("mm"), Some(7)).covers(&ORDER));
        assert!(!key(Some("mm"), Some(8)).covers(&ORDER));
        assert!(!key(Some("mm"), None).covers(&OrderScope::default()));
    }

    #[test]
    fn the_most_restrictive_covering_scope_wins_and_lift_respects_generations() {
        let g = Gate::new();
        assert!(g.is_clear());
        let (old, new, g1) = g.restrict(&key(Some("mm"), None), 11, REDUCING);
        assert_eq!((old, new), (ACTIVE, REDUCING));
        assert_eq!(g.decide(&ORDER), (REDUCING, 11));
        g.restrict(&key(None, Some(7)), 12, HALTED);
        assert_eq!(g.decide(&ORDER), (HALTED, 12));
        // a reduce-only never lowers a halt
        assert_eq!(g.restrict(&key(None, Some(7)), 12, REDUCING).1, HALTED);
        let (_, gen_now) = g.generation_of(12).unwrap();
        // a reset that began before the latest stop is superseded
        assert_eq!(g.lift(12, gen_now - 1), Err(LiftError::Superseded));
        assert_eq!(g.lift(12, gen_now), Ok(HALTED));
        assert_eq!(g.lift(12, gen_now), Err(LiftError::NotRestricted));
        assert_eq!(g.decide(&ORDER), (REDUCING, 11));
        assert_eq!(g.lift(11, g1), Ok(REDUCING));
        assert!(g.is_clear());
    }

    struct AlwaysHalted;
    impl ExternalRestrictions for AlwaysHalted {
        fn state_for(&self, _: &OrderScope<'_>) -> (u8, u64) {
            (HALTED, 99)
        }
    }

    #[test]
    fn an_attached_external_source_is_consulted() {
        let g = Gate::new();
        g.attach(Some(Box::new(AlwaysHalted)));
        assert_eq!(g.decide(&ORDER), (HALTED, 99));
        g.attach(None);
        assert_eq!(g.decide(&ORDER), (ACTIVE, 0));
    }

    #[test]
    fn readers_see_whole_snapshots_while_writers_restrict_and_lift() {
        let g = Arc::new(Gate::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (g, stop) = (Arc::clone(&g), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    // under Miri a bounded number of reads (each is slow there)
                    while !stop.load(Ordering::Relaxed) && (!cfg!(miri) || n < 20) {
                        let (state, id) = g.decide(&ORDER);
                        assert!(state == ACTIVE || id == 0 || id == 12, "{state} {id}");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let firm = ScopeKey::default();
        for _ in 0..if cfg!(miri) { 20 } else { 20_000 } {
            let (_, _, generation) = g.restrict(&firm, 0, HALTED);
            assert_eq!(g.decide(&ORDER).0, HALTED);
            g.lift(0, generation).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(g.is_clear());
    }

    #[test]
    fn the_gate_never_looks_clear_while_a_restriction_stands() {
        // the firm stays halted throughout; other scopes are halted and reset concurrently
        // (restrict/lift/replace races on the counter): no reader may ever see "clear"
        let g = Arc::new(Gate::new());
        g.restrict(&ScopeKey::default(), 0, HALTED);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (g, stop) = (Arc::clone(&g), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) && (!cfg!(miri) || n < 20) {
                        n += 1;
                        assert!(!g.is_clear(), "looked clear while the firm is halted");
                        assert_eq!(g.decide(&ORDER).0, HALTED);
                    }
                })
            })
            .collect();
        let rounds = if cfg!(miri) { 10 } else { 5_000 };
        let writers: Vec<_> = (1..=2u64)
            .map(|w| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    for i in 0..rounds {
                        let id = w * 1_000_000 + i;
                        let (_, _, generation) =
                            g.restrict(&key(Some("x"), Some(id as u32)), id, HALTED);
                        g.restrict(&key(Some("x"), Some(id as u32)), id, REDUCING);
                        let _ = g.lift(id, generation);
                        if let Some((_, gen_now)) = g.generation_of(id) {
                            g.lift(id, gen_now).unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(g.restrictions().len(), 1);
        let (_, generation) = g.generation_of(0).unwrap();
        g.lift(0, generation).unwrap();
        assert!(g.is_clear());
    }

    #[test]
    fn denial_limiter_counts_every_denial_and_audits_at_most_once_per_interval() {
        let l = DenialLimiter::new(100);
        assert_eq!(l.deny(1_000), Some(1));
        for t in 1_001..1_050 {
            assert_eq!(l.deny(t), None);
        }
        assert_eq!(l.deny(1_100), Some(50));
        assert_eq!(l.deny(1_150), None);
        assert_eq!(l.total(), 52);
    }

    #[test]
    fn denial_limiter_loses_no_count_across_threads() {
        let l = Arc::new(DenialLimiter::new(1));
        let per_thread: u64 = if cfg!(miri) { 50 } else { 10_000 };
        let reported = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (l, reported) = (Arc::clone(&l), Arc::clone(&reported));
                std::thread::spawn(move || {
                    for t in 0..per_thread {
                        if let Some(n) = l.deny(t * 8 + i) {
                            reported.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(l.total(), 8 * per_thread);
        // what was not reported yet is reported by the next audit
        let rest = l.deny(u64::MAX / 2).unwrap_or(0);
        assert_eq!(reported.load(Ordering::Relaxed) + rest, 8 * per_thread + 1);
    }
}
