//! The kill switch's native half: the order gate, the stop sequence and the latch, with the
//! audit records they write. Python keeps what needs Python: the stop handlers, the triggers
//! and the report.
//!
//! A stop is, in this order: (1) the gate closes (lock-free, before anything else can wait),
//! (2) KILL_SWITCH (halts only), STATE_CHANGE and the scope's TEXT go to the emergency ring,
//! (3) the latch file gets the restriction with one pwrite (it survives kill -9 and needs no
//! new disk space). Nothing in a stop takes a lock that a stop can hold while waiting, so a
//! stop from a signal handler or a stop handler, in any thread, never deadlocks.
//!
//! A reset is the opposite and slow on purpose: the RESET and STATE_CHANGE records first, then
//! (by the caller) a wait until the writer's hash chain covers them, and only then the gate
//! opens, if no stop of the scope arrived meanwhile ([`Gate::lift`]).
use crate::clock;
use crate::gate::{DenialLimiter, Gate, LiftError, OrderScope, ScopeKey, ACTIVE, HALTED};
use crate::latch::{Latch, SEQ_UNKNOWN};
use crate::logger::{AppendError, Logger, RingId};
use crate::record::kind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `KillSwitchReason.MANUAL`: the reason written on a reset's STATE_CHANGE.
const REASON_MANUAL: u16 = 4;

/// Where the kill switch's records go: an audit engine.
pub trait AuditSink: Send + Sync {
    /// Appends one record (emergency: through the kill-switch ring). Ok(seq) or why not.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        emergency: bool,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
    ) -> Result<u64, AppendError>;
}

impl AuditSink for Logger {
    #[inline]
    fn append(
        &self,
        emergency: bool,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
    ) -> Result<u64, AppendError> {
        let ring = if emergency {
            RingId::Emergency
        } else {
            RingId::Main
        };
        Logger::append(self, ring, kind, code, symbol_id, a, b, c)
    }
}

/// The control plane's shared table as a restriction source of the gate: `allows()` reads
/// it lock-free after the switch's own snapshot (ksa_core::control, fail closed).
impl crate::gate::ExternalRestrictions for Arc<crate::control::ControlTable> {
    #[inline]
    fn state_for(&self, o: &crate::gate::OrderScope<'_>) -> (u8, u64) {
        crate::control::ControlTable::state_for(self, o.account, o.strategy, o.symbol_id, o.venue)
    }
}

/// What a stop did, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopOutcome {
    /// Seq of the KILL_SWITCH record (of STATE_CHANGE for a reduce-only), or None when the
    /// engine refused it (closed, ring full): the latch still holds the restriction.
    pub seq: Option<u64>,
    /// State of the scope before and after.
    pub old: u8,
    /// State after (never lower than before).
    pub new: u8,
    /// Monotonic ns when the gate had closed.
    pub blocked_ns: u64,
    /// Monotonic ns when the records were handed to the engine.
    pub audited_ns: u64,
    /// The latch file holds the restriction.
    pub latched: bool,
}

/// Why a reset did not lift the restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetError {
    /// The scope is not restricted.
    NotRestricted,
    /// Another reset of this switch is in progress.
    Busy,
    /// The reset's records could not be written (closed engine, full ring).
    NotAudited(String),
    /// A stop of the scope arrived during the reset: the newer halt stands.
    Superseded,
}

/// A reset that has written its records and waits to be made verifiable.
#[derive(Debug, Clone, Copy)]
pub struct PendingReset {
    /// Seq of the RESET record.
    pub seq: u64,
    /// State before.
    pub old: u8,
    scope_id: u64,
    generation: u64,
}

impl PendingReset {
    /// The scope being reset.
    pub fn scope_id(&self) -> u64 {
        self.scope_id
    }
}

/// The native kill switch.
pub struct KillSwitchCore {
    /// The order gate.
    pub gate: Gate,
    sink: Option<Arc<dyn AuditSink>>,
    latch: Option<Latch>,
    denials: DenialLimiter,
    resetting: AtomicBool,
}

/// TEXT payloads of `text`: (chunk index, a, b, symbol_id), 20 UTF-8 bytes each, never
/// splitting a character (docs/FORMAT.md, kind TEXT).
pub fn text_chunks(text: &str) -> impl Iterator<Item = (u16, i64, i64, u32)> + '_ {
    let bytes = text.as_bytes();
    let mut start = 0usize;
    let mut index = 0u16;
    std::iter::from_fn(move || {
        if start >= bytes.len() && (index > 0 || !bytes.is_empty()) {
            return None;
        }
        let mut end = (start + 20).min(bytes.len());
        while end < bytes.len() && end > start && !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut chunk = [0u8; 20];
        chunk[..end - start].copy_from_slice(&bytes[start..end]);
        start = end.max(start + 1);
        let i = index;
        index = index.wrapping_add(1);
        Some((
            i,
            i64::from_le_bytes(chunk[..8].try_into().expect("8")),
            i64::from_le_bytes(chunk[8..16].try_into().expect("8")),
            u32::from_le_bytes(chunk[16..].try_into().expect("4")),
        ))
    })
}

impl KillSwitchCore {
    /// A switch writing to `sink` (None: nothing is audited) and latching in `latch`.
    /// `denial_interval_ns`: at most one ORDER_DENIED record per interval.
    pub fn new(
        sink: Option<Arc<dyn AuditSink>>,
        latch: Option<Latch>,
        denial_interval_ns: u64,
    ) -> KillSwitchCore {
        KillSwitchCore {
            gate: Gate::new(),
            sink,
            latch,
            denials: DenialLimiter::new(clock::ns_to_ticks(denial_interval_ns)),
            resetting: AtomicBool::new(false),
        }
    }

    /// May an order with these attributes go out? Denials are counted; one ORDER_DENIED
    /// record per interval carries the count. No lock, no allocation, no syscall.
    #[inline]
    pub fn allows(&self, order: &OrderScope<'_>, reduces_position: bool) -> bool {
        let (state, deny_id) = self.gate.decide(order);
        if state == ACTIVE || (state == crate::gate::REDUCING && reduces_position) {
            return true;
        }
        if let Some(n) = self.denials.deny(clock::ticks()) {
            self.audit(
                false,
                kind::ORDER_DENIED,
                0,
                order.symbol_id.unwrap_or(0),
                n as i64,
                0,
                deny_id,
            );
        }
        false
    }

    /// True when the switch writes its records to an audit engine.
    pub fn audits(&self) -> bool {
        self.sink.is_some()
    }

    /// Orders denied so far.
    pub fn denials(&self) -> u64 {
        self.denials.total()
    }

    /// One record; the seq, or None when the engine refused it.
    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &self,
        emergency: bool,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
    ) -> Option<u64> {
        self.sink
            .as_ref()?
            .append(emergency, kind, code, symbol_id, a, b, c)
            .ok()
    }

    /// TEXT records carrying `text`, attached to record `seq` (emergency ring).
    pub fn text(&self, seq: u64, text: &str) {
        for (i, a, b, sym) in text_chunks(text) {
            self.audit(true, kind::TEXT, i, sym, a, b, seq);
        }
    }

    /// The stop sequence (module doc). `target`: HALTED, or REDUCING for a reduce-only (which
    /// writes no KILL_SWITCH record: KILL_SWITCH always means a halt in the log).
    #[allow(clippy::too_many_arguments)]
    pub fn stop(
        &self,
        scope: &ScopeKey,
        scope_id: u64,
        scope_text: &str,
        target: u8,
        reason: u16,
        symbol_id: u32,
        position_size: i64,
        pnl_cents: i64,
    ) -> StopOutcome {
        let (old, new, _) = self.gate.restrict(scope, scope_id, target);
        let blocked_ns = clock::monotonic_ns();
        let ks = if target == HALTED {
            self.audit(
                true,
                kind::KILL_SWITCH,
                reason,
                symbol_id,
                position_size,
                pnl_cents,
                scope_id,
            )
        } else {
            None
        };
        let sc = self.audit(
            true,
            kind::STATE_CHANGE,
            new as u16,
            0,
            old as i64,
            reason as i64,
            scope_id,
        );
        if let Some(sc) = sc {
            if scope_id != 0 {
                // the scope's text next to every state change: restore maps the id back
                self.text(sc, &format!("scope:{scope_text}"));
            }
        }
        let audited_ns = clock::monotonic_ns();
        let seq = if target == HALTED { ks } else { sc };
        let latched = self.latch.as_ref().is_some_and(|l| {
            l.set(scope_id, scope_text, new, seq.unwrap_or(SEQ_UNKNOWN))
                .is_ok()
        });
        StopOutcome {
            seq,
            old,
            new,
            blocked_ns,
            audited_ns,
            latched,
        }
    }

    /// First half of a reset: checks the scope is restricted, writes RESET (accepted) and
    /// STATE_CHANGE (to ACTIVE). The gate stays closed until [`Self::finish_reset`]. The
    /// caller writes the TEXT records (operator, reason) and waits for the chain.
    pub fn begin_reset(&self, scope_id: u64) -> Result<PendingReset, ResetError> {
        let Some((old, generation)) = self.gate.generation_of(scope_id) else {
            return Err(ResetError::NotRestricted);
        };
        if self
            .resetting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ResetError::Busy);
        }
        if self.sink.is_none() {
            // a switch that audits nothing by construction (the warm-up's scratch switch)
            return Ok(PendingReset {
                seq: 0,
                old,
                scope_id,
                generation,
            });
        }
        let Some(seq) = self.audit(true, kind::RESET, 0, 0, old as i64, ACTIVE as i64, scope_id)
        else {
            self.resetting.store(false, Ordering::Release);
            return Err(ResetError::NotAudited(
                "the reset could not be audited: the audit engine refused the RESET record (closed, or its ring is full)".into(),
            ));
        };
        if self
            .audit(
                true,
                kind::STATE_CHANGE,
                ACTIVE as u16,
                0,
                old as i64,
                REASON_MANUAL as i64,
                scope_id,
            )
            .is_none()
        {
            self.abort_reset(scope_id, old);
            return Err(ResetError::NotAudited(
                "the reset could not be audited: the audit engine refused the STATE_CHANGE record"
                    .into(),
            ));
        }
        Ok(PendingReset {
            seq,
            old,
            scope_id,
            generation,
        })
    }

    /// Second half: opens the gate for the scope (and clears its latch) unless a stop of the
    /// scope came after [`Self::begin_reset`]; then the newer halt stands and is re-recorded
    /// after the reset, so the log's last word is the halt.
    pub fn finish_reset(&self, p: PendingReset) -> Result<u8, ResetError> {
        let result = match self.gate.lift(p.scope_id, p.generation) {
            Ok(old) => {
                if let Some(l) = &self.latch {
                    let _ = l.clear(p.scope_id);
                }
                Ok(old)
            }
            Err(LiftError::NotRestricted) => Ok(ACTIVE),
            Err(LiftError::Superseded) => {
                let state = self.gate.generation_of(p.scope_id).map_or(HALTED, |g| g.0);
                self.abort_reset(p.scope_id, state);
                Err(ResetError::Superseded)
            }
        };
        self.resetting.store(false, Ordering::Release);
        result
    }

    /// A reset that will not complete: a STATE_CHANGE back to the restriction, after the
    /// reset's records, so restore never sees the reset as the last word.
    pub fn abort_reset(&self, scope_id: u64, state: u8) {
        self.audit(
            true,
            kind::STATE_CHANGE,
            state.max(1) as u16,
            0,
            ACTIVE as i64,
            REASON_MANUAL as i64,
            scope_id,
        );
        self.resetting.store(false, Ordering::Release);
    }

    /// Installs restored restrictions (before `allows` first answers) and latches them.
    pub fn restore(&self, restrictions: Vec<(ScopeKey, u64, String, u8)>) {
        if let Some(l) = &self.latch {
            for (_, id, text, state) in &restrictions {
                let _ = l.set(*id, text, *state, SEQ_UNKNOWN);
            }
        }
        self.gate.replace_all(
            restrictions
                .into_iter()
                .map(|(scope, id, _, state)| (scope, id, state))
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_chunks_round_trip_without_splitting_characters() {
        for text in [
            "",
            "scope:strategy=mm",
            &"é".repeat(30),
            "exactly twenty bytes",
        ] {
            let mut bytes = Vec::new();
            for (i, (idx, a, b, sym)) in text_chunks(text).enumerate() {
                assert_eq!(idx as usize, i);
                let mut chunk = Vec::new();
                chunk.extend_from_slice(&a.to_le_bytes());
                chunk.extend_from_slice(&b.to_le_bytes());
                chunk.extend_from_slice(&sym.to_le_bytes());
                let end = chunk.iter().rposition(|&x| x != 0).map_or(0, |e| e + 1);
                assert!(std::str::from_utf8(&chunk[..end]).is_ok());
                bytes.extend_from_slice(&chunk[..end]);
            }
            assert_eq!(String::from_utf8(bytes).unwrap(), text);
        }
    }
}
