//! Order gate: precomputed per-scope trading state, read lock-free on the order path.
