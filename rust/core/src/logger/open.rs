//! [`Logger::open`]: recovery, the first segment, and the engine's threads.
use super::*;

impl Logger {
    /// Opens (or continues) the log in `config.directory` and starts the flusher.
    pub fn open(config: LoggerConfig) -> Result<Logger, OpenError> {
        for (setting, cap) in [
            (settings::BUFFER_SIZE, config.main_capacity),
            (settings::EMERGENCY_BUFFER_SIZE, config.emergency_capacity),
        ] {
            setting.check(cap as u64).map_err(OpenError::Config)?;
        }
        // Bounded so that `Instant + interval` can never overflow (a panic on the flusher).
        let day = Duration::from_secs(86_400);
        for (name, d) in [
            ("flush_interval", config.flush_interval),
            ("emergency_poll", config.emergency_poll),
            ("clock_check_interval", config.clock_check_interval),
        ] {
            if d.is_zero() || d > day {
                return Err(OpenError::Config(format!(
                    "{name} must be > 0 and at most one day, got {d:?}"
                )));
            }
        }
        for (name, mode) in [
            ("file_mode", config.file_mode),
            ("dir_mode", config.dir_mode),
        ] {
            if mode > 0o777 || mode & 0o002 != 0 {
                return Err(OpenError::Config(format!(
                    "{name} must be a permission mode in 0o000..=0o777 without the world-write \
                     bit, got {mode:#o}"
                )));
            }
        }
        let dir = config.directory.clone();
        let log_dir = Arc::new(
            LogDir::open(&dir, config.dir_mode, config.file_mode).map_err(|e| match e {
                DirError::Refused(why) => OpenError::Refused(why),
                DirError::NotADirectory(why) => OpenError::NotADirectory(why),
                DirError::Io(e) => OpenError::Io(dir.clone(), e),
            })?,
        );
        let dir_lock = lock_directory(&dir)?;
        if lock_identity(&dir_lock) != log_dir.identity().ok() {
            return Err(OpenError::Refused(format!(
                "{}: the directory was replaced while the logger opened it",
                dir.display()
            )));
        }
        let key = config.hmac_key.clone();
        let recovered = recover(&log_dir, key.as_deref())?;
        let segment_records = config.segment_records();
        // stats.bin first: a failed open leaves no fallocated segment behind.
        let stats_file =
            StatsFile::create(&log_dir).map_err(|e| OpenError::Io(dir.join("stats.bin"), e))?;
        let first_mark = recovered.next_seq.saturating_add(SEQ_BLOCK).min(SEQ_LIMIT);
        let first = PreparedSegment::create_in(&log_dir, recovered.next_index, segment_records)
            .and_then(|p| {
                p.activate(
                    recovered.next_seq,
                    first_mark,
                    &recovered.prev_chain,
                    key.as_deref(),
                )
            })
            .map_err(|e| OpenError::Io(dir.clone(), e))?;
        let first_name = format!("{:012}.seg", first.index());
        let undo = |e: io::Error| {
            let _ = log_dir.unlink(&first_name);
            OpenError::Io(dir.clone(), e)
        };
        let direct = config.engine == Engine::Direct;
        // The direct engine has no use for rings: the smallest ones keep the shared code
        // (stats, close, fork) one path without holding megabytes of pre-faulted slots.
        let rings = if direct {
            [Ring::new(64), Ring::new(64)]
        } else {
            [
                Ring::new(config.main_capacity),
                Ring::new(config.emergency_capacity),
            ]
        };
        let consumers = [
            rings[0].consumer().expect("fresh ring"),
            rings[1].consumer().expect("fresh ring"),
        ];
        let shared = Arc::new(Shared {
            syncer: Syncer::new(),
            seq: CachePadded::new(AtomicU64::new(recovered.next_seq)),
            seq_reserved: CachePadded::new(AtomicU64::new(first_mark)),
            chain_nudge: OnceLock::new(),
            chain_waker: OnceLock::new(),
            rings,
            drops: [DropTracker::new(), DropTracker::new()],
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            flush_requested: AtomicBool::new(false),
            sync_requested: AtomicBool::new(false),
            counters: Counters::default(),
            config,
            flusher_waker: CachePadded::new(Waker::new()),
        });
        shared.counters.segments.store(1, Ordering::Relaxed);
        let mut chainer = if direct {
            Chaining::Inline {
                key: key.clone(),
                current: None,
            }
        } else {
            Chaining::Thread(Chainer::spawn(key.clone(), Arc::clone(&shared)).map_err(undo)?)
        };
        chainer.open(&first, &recovered.prev_chain, &shared);
        let mut flusher = Flusher {
            shared: Arc::clone(&shared),
            consumers,
            sink: Sink {
                next_index: first.index() + 1,
                current: Some(first),
                next: None,
                preparing: None,
                retry_at: None,
                backoff: Duration::ZERO,
                segment_records,
                chainer,
                key,
                last_chain: recovered.prev_chain,
                dir: Arc::clone(&log_dir),
                session_first: recovered.next_index,
                reserve_used: [false; 3],
                inline: direct,
                unsynced: Vec::new(),
            },
            calibration: Calibration::new(),
            stats_file,
            reported_drops: [0, 0],
            gap_range: [(u64::MAX, 0); 2],
            pending_system: Vec::with_capacity(8),
            last_clock_check: None,
        };
        flusher.sink.prepare_next(&shared);
        flusher.push_system(
            kind::SESSION_START,
            0,
            std::process::id() as i64,
            recovered.next_seq as i64,
            1,
        );
        if direct {
            let mut d = Direct {
                flusher,
                next_tick: Instant::now(),
                last_publish: None,
            };
            d.tick();
            d.flusher.write_pending_system();
            d.flusher.commit(false);
            return Ok(Logger {
                shared,
                flusher: Mutex::new(None),
                recovery_notes: recovered.notes,
                owner_pid: std::process::id(),
                abandoned: AtomicBool::new(false),
                dir_lock: Mutex::new(Some(dir_lock)),
                direct: Some(Mutex::new(Some(d))),
            });
        }
        let syncer_shared = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name("ksa-syncer".into())
            .spawn(move || syncer_shared.syncer.run(&syncer_shared.counters))
            .map_err(undo)?;
        let handle = std::thread::Builder::new()
            .name("ksa-flusher".into())
            .spawn(move || {
                flusher.run();
                let _ = syncer.join();
            })
            .map_err(undo)?;
        Ok(Logger {
            shared,
            flusher: Mutex::new(Some(handle)),
            recovery_notes: recovered.notes,
            owner_pid: std::process::id(),
            abandoned: AtomicBool::new(false),
            dir_lock: Mutex::new(Some(dir_lock)),
            direct: None,
        })
    }
}

fn lock_directory(dir: &Path) -> Result<std::fs::File, OpenError> {
    let handle = std::fs::File::open(dir).map_err(|e| OpenError::Io(dir.to_path_buf(), e))?;
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            OpenError::Locked(dir.to_path_buf())
        } else {
            OpenError::Io(dir.to_path_buf(), err)
        });
    }
    Ok(handle)
}

/// (device, inode) of the locked directory.
fn lock_identity(handle: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    handle.metadata().ok().map(|m| (m.dev(), m.ino()))
}
