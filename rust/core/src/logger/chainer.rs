//! The hash chain of the current segment: [`Chaining`] (on the [`Chainer`] thread, or
//! inline for the direct engine) and the chainer thread itself.
use super::*;

/// The hash chain of the current segment: on the chainer thread (rings), or inline, brought
/// up to date by the direct engine's caller at flush, roll and close.
pub(super) enum Chaining {
    Thread(Chainer),
    Inline {
        key: Option<Vec<u8>>,
        current: Option<segment::ChainWriter>,
    },
}

impl Chaining {
    pub(super) fn open(&mut self, segment: &SegmentWriter, prev: &ChainHead, shared: &Shared) {
        match self {
            Chaining::Thread(c) => c.open(segment, prev, shared),
            Chaining::Inline { key, current } => {
                *current = segment
                    .sync_handle()
                    .and_then(|f| segment::ChainWriter::from_file(f, prev, key.as_deref()))
                    .map_err(|_| shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed))
                    .ok();
            }
        }
    }

    /// Hashes what is committed and publishes how far the chain reaches.
    pub(super) fn catch_up(&mut self, shared: &Shared) {
        match self {
            Chaining::Thread(_) => shared.nudge_chainer(),
            Chaining::Inline { current, .. } => {
                if let Some(c) = current.as_mut() {
                    c.catch_up();
                    let (index, done) = c.progress();
                    shared
                        .counters
                        .chained_point
                        .fetch_max(chain_point(index, done), Ordering::AcqRel);
                }
            }
        }
    }

    pub(super) fn committed(&mut self, records_flushed: u64) {
        if let Chaining::Thread(c) = self {
            c.committed(records_flushed);
        }
    }

    pub(super) fn seal(&mut self, shared: &Shared) -> ChainHead {
        match self {
            Chaining::Thread(c) => c.seal(shared),
            Chaining::Inline { current, .. } => {
                let head = current.take().and_then(|mut c| {
                    c.catch_up();
                    let (index, done) = c.progress();
                    let head = c.seal().ok();
                    if head.is_some() {
                        shared
                            .counters
                            .chained_point
                            .fetch_max(chain_point(index, done), Ordering::AcqRel);
                    }
                    head
                });
                head.unwrap_or_else(|| {
                    shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                    [0; 32]
                })
            }
        }
    }

    pub(super) fn stop(&mut self) {
        if let Chaining::Thread(c) = self {
            c.stop();
        }
    }
}

pub(super) enum ChainMsg {
    /// A handle on the new current segment (never reopened by path) and its `prev_chain`.
    Open(std::fs::File, ChainHead),
    /// Catch up now (a chained flush is waiting).
    Nudge,
    Seal(std::sync::mpsc::SyncSender<Option<ChainHead>>),
    Stop,
}

/// The hash-chain thread: it follows the current segment's `committed` count from its own
/// file ([`segment::ChainWriter`], `pread`), so SHA-256 (~36 ns a record) is off the flusher.
/// While records flow it hashes about every millisecond; when it has caught up it parks until
/// the flusher commits more ([`Chainer::committed`]) or sends a message (no periodic wakeup
/// but a 1 s safety net). At a roll the flusher waits for it to seal the old segment: the next
/// segment's `prev_chain` must be final before the next segment is written.
pub(super) struct Chainer {
    tx: std::sync::mpsc::Sender<ChainMsg>,
    thread: Option<JoinHandle<()>>,
    waker: Arc<Waker>,
    /// `records_flushed` at the last wake, so a pass that committed nothing new wakes nobody.
    notified: u64,
}

/// While records flow, the chainer hashes in batches of about this period.
const CHAIN_BATCH: Duration = Duration::from_millis(1);
/// The chainer's longest park (a safety net: the flusher wakes it after every commit).
const CHAIN_MAX_PARK: Duration = Duration::from_secs(1);

impl Chainer {
    pub(super) fn spawn(key: Option<Vec<u8>>, shared: Arc<Shared>) -> io::Result<Chainer> {
        use std::sync::mpsc::TryRecvError;
        let (tx, rx) = std::sync::mpsc::channel::<ChainMsg>();
        let _ = shared.chain_nudge.set(tx.clone());
        let waker = Arc::new(Waker::new());
        let _ = shared.chain_waker.set(Arc::clone(&waker));
        let thread_waker = Arc::clone(&waker);
        let thread = std::thread::Builder::new()
            .name("ksa-chainer".into())
            .spawn(move || {
                yield_to_callers();
                thread_waker.register_current();
                let mut current: Option<segment::ChainWriter> = None;
                loop {
                    loop {
                        match rx.try_recv() {
                            Ok(ChainMsg::Open(file, prev)) => {
                                current =
                                    segment::ChainWriter::from_file(file, &prev, key.as_deref())
                                        .map_err(|_| {
                                            shared
                                                .counters
                                                .sink_errors
                                                .fetch_add(1, Ordering::Relaxed)
                                        })
                                        .ok();
                            }
                            Ok(ChainMsg::Seal(reply)) => {
                                let head = current.take().and_then(|mut c| {
                                    c.catch_up();
                                    let (index, done) = c.progress();
                                    let head = c.seal().ok();
                                    if head.is_some() {
                                        shared
                                            .counters
                                            .chained_point
                                            .fetch_max(chain_point(index, done), Ordering::AcqRel);
                                    }
                                    head
                                });
                                let _ = reply.send(head);
                            }
                            Ok(ChainMsg::Nudge) => {}
                            Ok(ChainMsg::Stop) | Err(TryRecvError::Disconnected) => return,
                            Err(TryRecvError::Empty) => break,
                        }
                    }
                    let hashed = current.as_mut().map_or(0, |c| {
                        let n = c.catch_up();
                        let (index, done) = c.progress();
                        shared
                            .counters
                            .chained_point
                            .fetch_max(chain_point(index, done), Ordering::AcqRel);
                        n
                    });
                    if hashed > 0 {
                        // Records flow: batch them (a message still cuts this short).
                        std::thread::park_timeout(CHAIN_BATCH);
                    } else {
                        // Caught up: park until a commit; the re-check hashes a commit that
                        // raced with the park announcement (see crate::idle). What it hashes
                        // is published as `chained_point` at the top of the next pass.
                        thread_waker.park(CHAIN_MAX_PARK, || {
                            current.as_mut().is_some_and(|c| c.catch_up() > 0)
                        });
                    }
                }
            })?;
        Ok(Chainer {
            tx,
            thread: Some(thread),
            waker,
            notified: 0,
        })
    }

    fn send(&self, msg: ChainMsg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        self.waker.wake();
        sent
    }

    /// After a commit: wakes the chainer if it is parked and `records_flushed` moved.
    pub(super) fn committed(&mut self, records_flushed: u64) {
        if records_flushed != self.notified {
            self.notified = records_flushed;
            self.waker.wake_if_parked();
        }
    }

    pub(super) fn open(&self, segment: &SegmentWriter, prev: &ChainHead, shared: &Shared) {
        match segment.sync_handle() {
            Ok(file) => {
                self.send(ChainMsg::Open(file, *prev));
            }
            Err(_) => {
                shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The final chain of the segment being closed (zeros, counted as a sink error, if the
    /// chainer is gone or could not read the segment: verify then reports the broken link).
    pub(super) fn seal(&self, shared: &Shared) -> ChainHead {
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        if self.send(ChainMsg::Seal(reply_tx)) {
            if let Ok(Some(head)) = reply_rx.recv_timeout(Duration::from_secs(10)) {
                return head;
            }
        }
        shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
        [0; 32]
    }

    pub(super) fn stop(&mut self) {
        self.send(ChainMsg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
