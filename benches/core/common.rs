//! What the benches share: the ring entry they push, short criterion groups, where their
//! files go, and the logger they open.
use ksa_core::clock;
use ksa_core::logger::{Logger, LoggerConfig};
use ksa_core::ring::Entry;
use std::time::Duration;

pub(crate) fn entry(i: u64) -> Entry {
    Entry {
        seq: i,
        ticks: clock::ticks(),
        kind: 2,
        flags: 0,
        code: 0,
        thread_id: 4242,
        a: 100,
        b: 10_125,
        c: i,
        symbol_id: 7,
    }
}

/// Short groups: seconds per bench, not minutes.
pub(crate) fn quick(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);
}

/// Where the benches put their files: `KSA_BENCH_DIR`, else the system temp directory.
pub(crate) fn bench_dir() -> std::path::PathBuf {
    std::env::var_os("KSA_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir)
}

/// Where the drain benches put their segments: `KSA_BENCH_DRAIN_DIR`, else `/dev/shm` when it
/// exists. The drain measures the flusher's CPU work into mapped pages; on a disk the same
/// pages are written back later and asynchronously (`sync_file_range`), and gigabytes of
/// bench output would only measure the disk.
pub(crate) fn drain_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("KSA_BENCH_DRAIN_DIR") {
        return d.into();
    }
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        bench_dir()
    }
}

pub(crate) fn open_logger(dir: &std::path::Path) -> Logger {
    let mut cfg = LoggerConfig::new(dir);
    // Rings large enough that the flusher on a busy 2-core machine never lets them fill:
    // this measures the append, not the drop path.
    cfg.main_capacity = 1 << 22;
    cfg.emergency_capacity = 1 << 22;
    Logger::open(cfg).expect("logger")
}
