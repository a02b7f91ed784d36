//! Name -> [`Operation`] lookup: a lock-free open-addressing table ([`OpTable`]) for the by-name
//! record path, in front of the locked map that owns every operation ([`OpMap`]).
//!
//! Names are resolved by a lock-free open-addressing table (write-once slots), so recording by
//! name costs one hash and a string compare more than recording through an [`Operation`] handle.
use rustc_hash::FxHasher;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::recorder::Operation;

/// FxHash (`rustc-hash`): operation names are short and trusted, and SipHash would double
/// the by-name record cost.
pub(super) fn hash_name(name: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

/// Slots of the lock-free lookup table ([`OpTable`]).
pub(super) const TABLE_SLOTS: usize = 512;

/// Lock-free name -> operation lookup for the by-name record path: open addressing with linear
/// probing over write-once slots. Invariant: slots are only ever filled (under
/// `Inner::ops`' write lock), never emptied, and a name is stored in the first empty slot of its
/// probe sequence, so a lookup that meets an empty slot knows the name is absent. Names beyond
/// the table's capacity live only in `Inner::ops` (the slow path).
pub(super) struct OpTable {
    pub(super) slots: Box<[std::sync::OnceLock<Arc<Operation>>]>,
}

impl OpTable {
    pub(super) fn new() -> Self {
        OpTable {
            slots: (0..TABLE_SLOTS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    #[inline]
    pub(super) fn get(&self, name: &str) -> Option<&Arc<Operation>> {
        let h = hash_name(name) as usize;
        for i in 0..TABLE_SLOTS {
            match self.slots[(h.wrapping_add(i)) & (TABLE_SLOTS - 1)].get() {
                None => return None,
                Some(op) if op.name == name => return Some(op),
                Some(_) => {}
            }
        }
        None
    }

    /// Caller holds the ops write lock and has checked that `op` is absent.
    pub(super) fn insert(&self, op: &Arc<Operation>) {
        let h = hash_name(&op.name) as usize;
        // Keep a quarter free so that misses stay short.
        for i in 0..TABLE_SLOTS * 3 / 4 {
            let slot = &self.slots[(h.wrapping_add(i)) & (TABLE_SLOTS - 1)];
            if slot.get().is_none() {
                let _ = slot.set(Arc::clone(op));
                return;
            }
        }
    }
}

pub(super) type OpMap = HashMap<String, Arc<Operation>, BuildHasherDefault<FxHasher>>;
