//! [`Syncer`]: the thread that makes segment files durable (`fdatasync`) off the flusher.
use super::*;

/// Makes segment files durable (`fdatasync`) on its own thread, so the flusher never waits
/// for the disk. Requests coalesce: a burst of kill switches costs one sync.
pub(super) struct Syncer {
    pending: Mutex<(Vec<std::fs::File>, Option<[u64; 2]>, bool)>,
    wake: std::sync::Condvar,
}

impl Syncer {
    pub(super) fn new() -> Syncer {
        Syncer {
            pending: Mutex::new((Vec::new(), None, false)),
            wake: std::sync::Condvar::new(),
        }
    }

    /// Queues `file` for a sync; `positions` (ring cursors) become durable once it is done.
    pub(super) fn post(&self, file: std::fs::File, positions: Option<[u64; 2]>) {
        if let Ok(mut p) = self.pending.lock() {
            p.0.push(file);
            if positions.is_some() {
                p.1 = positions;
            }
            self.wake.notify_one();
        }
    }

    pub(super) fn stop(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.2 = true;
            self.wake.notify_one();
        }
    }

    pub(super) fn run(&self, counters: &Counters) {
        run_only_when_idle();
        loop {
            let (files, positions, stop) = {
                let Ok(mut p) = self.pending.lock() else {
                    return;
                };
                while p.0.is_empty() && !p.2 {
                    p = match self.wake.wait(p) {
                        Ok(p) => p,
                        Err(_) => return,
                    };
                }
                (std::mem::take(&mut p.0), p.1.take(), p.2)
            };
            if files.is_empty() {
                if stop {
                    return;
                }
                continue;
            }
            let mut ok = true;
            for f in &files {
                ok &= f.sync_data().is_ok();
            }
            if ok {
                counters.durable_syncs.fetch_add(1, Ordering::Relaxed);
                if let Some(positions) = positions {
                    for (pos, value) in counters.durable_pos.iter().zip(positions) {
                        pos.fetch_max(value, Ordering::Release);
                    }
                }
            } else {
                counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
