//! The hot path: [`Logger::append`] (ring engines) and its direct-engine twin, what
//! happens when a record cannot be taken (unreserved seq, full ring), and the `audit*`
//! calls that route a record to its ring.
use super::*;

impl Logger {
    /// Appends a record. The hot path: no lock, no allocation, no syscall.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        ring: RingId,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
    ) -> Result<u64, AppendError> {
        let s = &*self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return Err(AppendError::Closed);
        }
        if let Some(direct) = &self.direct {
            return self.append_direct(direct, ring, kind, code, symbol_id, a, b, c);
        }
        let seq = s.seq.fetch_add(1, Ordering::Relaxed);
        if seq >= s.seq_reserved.load(Ordering::Relaxed) {
            return self.unreserved(ring, seq);
        }
        let entry = Entry {
            seq,
            ticks: clock::ticks(),
            kind,
            flags: if ring == RingId::Emergency {
                FLAG_EMERGENCY
            } else {
                0
            },
            code,
            thread_id: thread_id(),
            a,
            b,
            c,
            symbol_id,
        };
        let r = &s.rings[ring as usize];
        if r.try_push(&entry).is_ok() {
            if ring == RingId::Emergency {
                // A halt must reach the file within the persist goal after any quiet.
                s.flusher_waker.wake_if_parked();
            } else if s.flusher_waker.is_parked() && r.len() * 4 >= r.capacity() {
                // Main-ring records wait for the park timeout, unless the ring fills up.
                s.flusher_waker.wake();
            }
            return Ok(seq);
        }
        self.overflow(ring, &entry)
    }

    /// [`Engine::Direct`]: the caller writes its record itself. Under the mutex, so the seq
    /// order is the file order; committed (`pwrite` of the record, then of `committed`) before
    /// it returns, so a record whose seq was returned survives `kill -9`.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn append_direct(
        &self,
        direct: &Mutex<Option<Direct>>,
        ring: RingId,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
    ) -> Result<u64, AppendError> {
        let s = &*self.shared;
        if self.in_forked_child() {
            // A fork from C (no at-fork hook ran): the segment is the parent's, and its
            // mutex may have been held at the fork. One getpid, beside two pwrites.
            return Err(AppendError::Closed);
        }
        let Ok(mut guard) = direct.lock() else {
            return Err(AppendError::Closed);
        };
        let Some(d) = guard.as_mut() else {
            return Err(AppendError::Closed);
        };
        let ticks = clock::ticks();
        d.tick();
        d.flusher.write_pending_system();
        let seq = s.seq.fetch_add(1, Ordering::Relaxed);
        if seq >= s.seq_reserved.load(Ordering::Relaxed) {
            // Here the writer raises the mark itself; it stays below only if that pwrite failed.
            d.flusher.raise_mark();
            if seq >= s.seq_reserved.load(Ordering::Relaxed) {
                drop(guard);
                return self.unreserved(ring, seq);
            }
        }
        let entry = Entry {
            seq,
            ticks,
            kind,
            flags: if ring == RingId::Emergency {
                FLAG_EMERGENCY
            } else {
                0
            },
            code,
            thread_id: thread_id(),
            a,
            b,
            c,
            symbol_id,
        };
        if !d.flusher.write_one(ring, &entry) {
            // No room (a full disk, and the reserve is for kill-switch records): counted and
            // declared by a GAP record, as a full ring is.
            s.drops[ring as usize].note(entry.seq);
            return Err(AppendError::Dropped(entry.seq));
        }
        s.counters.direct_written.fetch_add(1, Ordering::Relaxed);
        d.flusher.commit(false);
        Ok(entry.seq)
    }

    /// The counter reached the mark on file (the flusher is more than half a block behind):
    /// handing out this seq could repeat it after a crash, so the record is refused, counted
    /// and declared by a GAP record, like a ring overflow. The caller gets no seq.
    #[cold]
    fn unreserved(&self, ring: RingId, seq: u64) -> Result<u64, AppendError> {
        let s = &*self.shared;
        s.counters.seq_unreserved.fetch_add(1, Ordering::Relaxed);
        s.drops[ring as usize].note(seq);
        Err(AppendError::Dropped(seq))
    }

    #[cold]
    fn overflow(&self, ring: RingId, entry: &Entry) -> Result<u64, AppendError> {
        let s = &*self.shared;
        if let OverflowPolicy::Spin(limit) = s.config.overflow {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                std::hint::spin_loop();
                if s.rings[ring as usize].try_push(entry).is_ok() {
                    return Ok(entry.seq);
                }
            }
        }
        s.drops[ring as usize].note(entry.seq);
        Err(AppendError::Dropped(entry.seq))
    }

    /// Audits a record of an application kind (1..=63; the rest are the logger's own). The one
    /// place that routes: KILL_SWITCH always goes through the emergency ring, however it is
    /// audited; `emergency` sends any other kind there too.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &self,
        kind: u8,
        code: u16,
        symbol_id: u32,
        a: i64,
        b: i64,
        c: u64,
        emergency: bool,
    ) -> Result<u64, AuditError> {
        if kind == 0 || kind >= kind::GAP {
            return Err(AuditError::NotApplicationKind(kind));
        }
        let ring = if emergency || kind == kind::KILL_SWITCH {
            RingId::Emergency
        } else {
            RingId::Main
        };
        self.append(ring, kind, code, symbol_id, a, b, c)
            .map_err(AuditError::Append)
    }

    /// A kill-switch record, through the emergency ring.
    #[inline]
    pub fn audit_kill_switch(
        &self,
        reason: u16,
        symbol_id: u32,
        position_size: i64,
        pnl_cents: i64,
    ) -> Result<u64, AppendError> {
        self.append(
            RingId::Emergency,
            kind::KILL_SWITCH,
            reason,
            symbol_id,
            position_size,
            pnl_cents,
            0,
        )
    }

    /// A trade record, through the main ring.
    #[inline]
    pub fn audit_trade(
        &self,
        symbol_id: u32,
        quantity: i64,
        price_cents: i64,
        order_id: u64,
    ) -> Result<u64, AppendError> {
        self.append(
            RingId::Main,
            kind::TRADE,
            0,
            symbol_id,
            quantity,
            price_cents,
            order_id,
        )
    }
}
