//! The latency monitor's record path never allocates after an operation's first use.
//!
//! Its own test binary, because it installs a counting global allocator (per thread, so the
//! monitor's background threads and other tests do not disturb the count).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use ksa_core::monitor::{Monitor, MonitorConfig};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn ten_million_records_allocate_nothing_after_first_use() {
    let m = Monitor::new(MonitorConfig {
        tick: Duration::from_millis(1), // collections run concurrently with the records
        window: Duration::from_millis(50),
        ..MonitorConfig::default()
    });
    let op = m.operation("kill_switch_audit");
    op.record(1);
    m.record("trade_audit", 1);
    let before = allocations();
    for i in 0..10_000_000u64 {
        // 0 ns .. ~120 s: includes values clamped above the histogram's range.
        let v = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 27) % 120_000_000_000;
        if i % 2 == 0 {
            op.record(v);
        } else {
            m.record("trade_audit", v);
        }
    }
    assert_eq!(allocations() - before, 0);
    let a = m.analysis("kill_switch_audit", false).unwrap();
    assert_eq!(a.count, 5_000_001);
    assert!(a.clamped > 0);
    m.shutdown();
}
