//! killswitch-audit core: a lock-free audit trail for a trading kill switch.
//!
//! Knows nothing of Python. The pieces, bottom up:
//! - [`record`]: the fixed 64-byte record and its byte layout (docs/FORMAT.md);
//! - [`ring`]: the bounded multi-producer ring the hot path writes into;
//! - [`clock`]: TSC ticks on the hot path, converted to UTC/monotonic ns by the flusher;
//! - [`segment`] and [`chain`]: the segment files and their hash chain;
//! - [`logger`]: two rings, the flusher thread and the drop accounting;
//! - [`idle`]: how the background threads wait (back-off, parking, wake-ups);
//! - [`reader`]: reads and verifies a log directory (recovery, tests, CLI);
//! - [`gate`], [`killswitch`], [`latch`], [`restore`]: the order gate, the stop and reset
//!   sequences, the halt latch file, and the fail-closed restore at start;
//! - [`monitor`]: HdrHistogram latency monitor;
//! - [`control`]: the host-local control plane's shared state file, watcher and presence.
#![deny(missing_docs)]

pub mod chain;
pub mod clock;
pub mod control;
pub mod crc;
pub mod gate;
pub mod idle;
pub mod killswitch;
pub mod latch;
pub mod logger;
pub mod monitor;
pub mod reader;
pub mod record;
pub mod restore;
pub mod ring;
pub mod segment;
