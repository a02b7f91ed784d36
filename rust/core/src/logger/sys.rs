//! libc helpers of the engine's threads: cached thread ids, scheduling policy, timer slack,
//! and the kernel's clock synchronisation state ([`clock_sync_state`]).
use super::*;

thread_local! {
    static THREAD_ID: Cell<u32> = const { Cell::new(0) };
}

#[inline]
pub(super) fn thread_id() -> u32 {
    THREAD_ID.with(|id| {
        let cached = id.get();
        if cached != 0 {
            return cached;
        }
        // SAFETY: gettid has no preconditions; it is called once per thread.
        let tid = unsafe { libc::gettid() } as u32;
        id.set(tid);
        tid
    })
}

/// The engine's threads (flusher, chainer, syncer, preparer) never preempt the caller's
/// thread on wakeup: SCHED_BATCH disables wakeup preemption, so a thread waking up takes an
/// idle core (the usual case: the flusher still made the 200 µs persist goal, BENCHMARKS.md)
/// or waits for the next tick instead of interrupting the trading thread mid-call.
pub(super) fn yield_to_callers() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_BATCH.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

/// SCHED_IDLE: the thread runs only on a CPU nothing else wants, and never takes a time slice
/// from the caller's thread at a tick either (SCHED_BATCH still does). For threads with no
/// latency target of their own (the syncer).
pub(super) fn run_only_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

pub(super) fn set_timer_slack_ns(ns: u64) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes plain integers and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// The kernel's view of clock synchronisation (adjtimex, read-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSync {
    /// 0 synchronised, 1 unsynchronised, 2 unknown (adjtimex failed).
    pub state: u16,
    /// Estimated error, µs (-1 when unknown).
    pub est_error_us: i64,
    /// Maximum error, µs (-1 when unknown).
    pub max_error_us: i64,
    /// Kernel status bits | clock state << 32.
    pub status_bits: u64,
}

/// Reads adjtimex without changing anything.
pub fn clock_sync_state() -> ClockSync {
    // SAFETY: timex is plain old data; zeroed is a valid value (modes = 0: read only).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid, writable timex; with modes 0 adjtimex only reads the clock state.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        return ClockSync {
            state: 2,
            est_error_us: -1,
            max_error_us: -1,
            status_bits: 0,
        };
    }
    let unsynced = rc == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0;
    ClockSync {
        state: if unsynced { 1 } else { 0 },
        est_error_us: tx.esterror as i64,
        max_error_us: tx.maxerror as i64,
        status_bits: (tx.status as u32 as u64) | ((rc as u32 as u64) << 32),
    }
}
