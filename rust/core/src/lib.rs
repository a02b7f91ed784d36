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
//! - [`monitor`]: HdrHistogram latency monitor.
#![deny(missing_docs)]

pub mod chain;
pub mod clock;
pub mod crc;
pub mod gate;
pub mod idle;
pub mod logger;
pub mod monitor;
pub mod reader;
pub mod record;
pub mod ring;
pub mod segment;
