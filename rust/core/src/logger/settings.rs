//! The defaults and limits of the logger's settings, named by their YAML keys
//! (`audit_system.<key>`): the one place they are written. [`LoggerConfig::new`] takes the
//! defaults, [`Logger::open`] and the binding check the limits with [`IntSetting::check`], and
//! the Python config reads both (`_native.logger_settings()`), so a YAML file, the Python API
//! and the core cannot disagree.
//!
//! [`LoggerConfig::new`]: super::LoggerConfig::new
//! [`Logger::open`]: super::Logger::open

/// An integer setting: default and inclusive range (a power of two when `pow2`).
#[derive(Debug, Clone, Copy)]
pub struct IntSetting {
    /// YAML key under `audit_system`, and keyword of `AuditLogger`.
    pub key: &'static str,
    /// Used when the setting is not given.
    pub default: u64,
    /// Smallest allowed.
    pub min: u64,
    /// Largest allowed.
    pub max: u64,
    /// Must be a power of two.
    pub pow2: bool,
}

impl IntSetting {
    /// `value` when it is allowed, else the message naming the key, the rule and the value.
    pub fn check(&self, value: u64) -> Result<u64, String> {
        let in_range = (self.min..=self.max).contains(&value);
        if in_range && (!self.pow2 || value.is_power_of_two()) {
            return Ok(value);
        }
        let what = if self.pow2 {
            "a power of two"
        } else {
            "an int"
        };
        Err(format!(
            "{} must be {what} in {}..={}, got {value}",
            self.key, self.min, self.max
        ))
    }
}

/// A number setting: default, greater than zero, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct NumberSetting {
    /// YAML key under `audit_system`, and keyword of `AuditLogger`.
    pub key: &'static str,
    /// Used when the setting is not given.
    pub default: f64,
    /// Largest allowed (the smallest is anything above zero).
    pub max: f64,
}

impl NumberSetting {
    /// `value` when it is allowed, else the message naming the key, the rule and the value.
    pub fn check(&self, value: f64) -> Result<f64, String> {
        if value > 0.0 && value <= self.max {
            return Ok(value);
        }
        Err(format!(
            "{} must be greater than 0 and at most {}, got {value}",
            self.key, self.max
        ))
    }
}

/// A choice among names; the first is the default.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceSetting {
    /// YAML key under `audit_system`, and keyword of `AuditLogger`.
    pub key: &'static str,
    /// The names allowed; the first is the default.
    pub choices: &'static [&'static str],
}

impl ChoiceSetting {
    /// The default choice.
    pub fn default(&self) -> &'static str {
        self.choices[0]
    }
    /// The index of `value` in `choices`, else the message naming key and choices.
    pub fn check(&self, value: &str) -> Result<usize, String> {
        self.choices
            .iter()
            .position(|c| *c == value)
            .ok_or_else(|| {
                format!(
                    "{} must be one of {}, got {value:?}",
                    self.key,
                    self.choices.join(", ")
                )
            })
    }
}

/// Main ring slots (64-byte records): trades, orders, state changes.
pub const BUFFER_SIZE: IntSetting = IntSetting {
    key: "buffer_size",
    default: 131_072,
    min: 64,
    max: 1 << 24,
    pow2: true,
};
/// Emergency ring slots: kill-switch records only, drained first.
pub const EMERGENCY_BUFFER_SIZE: IntSetting = IntSetting {
    key: "emergency_buffer_size",
    default: 16_384,
    min: 64,
    max: 1 << 22,
    pow2: true,
};
/// Segment file size before the log rolls to the next file, MiB.
pub const SEGMENT_SIZE_MB: IntSetting = IntSetting {
    key: "segment_size_mb",
    default: 64,
    min: 1,
    max: 4096,
    pow2: false,
};
/// busy_poll: the flusher's look at the emergency ring; backoff: its first park, µs.
pub const EMERGENCY_POLL_US: IntSetting = IntSetting {
    key: "emergency_poll_us",
    default: 50,
    min: 10,
    max: 100_000,
    pow2: false,
};
/// Longest wait of the `spin` overflow policy, µs.
pub const SPIN_LIMIT_US: IntSetting = IntSetting {
    key: "spin_limit_us",
    default: 10,
    min: 0,
    max: 1_000,
    pow2: false,
};
/// How often the flusher drains the main ring, ms.
pub const FLUSH_INTERVAL_MS: NumberSetting = NumberSetting {
    key: "flush_interval_ms",
    default: 2.0,
    max: 10_000.0,
};
/// How often a CLOCK record is written, s.
pub const CLOCK_CHECK_INTERVAL_S: NumberSetting = NumberSetting {
    key: "clock_check_interval_s",
    default: 1.0,
    max: 86_400.0,
};
/// Main ring full: drop (count, GAP record) or spin (bounded wait).
pub const OVERFLOW_POLICY: ChoiceSetting = ChoiceSetting {
    key: "overflow_policy",
    choices: &["drop", "spin"],
};
/// How the flusher waits when there is nothing to do.
pub const IDLE_STRATEGY: ChoiceSetting = ChoiceSetting {
    key: "idle_strategy",
    choices: &["backoff", "busy_poll"],
};
/// Rings and threads, or each call writes its record itself.
pub const ENGINE: ChoiceSetting = ChoiceSetting {
    key: "engine",
    choices: &["rings", "direct"],
};
/// fdatasync the segment after kill-switch records.
pub const DURABLE_KILL_SWITCH: bool = true;
/// Mode of the segment files and stats.bin.
pub const FILE_MODE: u32 = crate::segment::DEFAULT_FILE_MODE;
/// Mode of the log directory when the logger creates it.
pub const DIR_MODE: u32 = crate::segment::DEFAULT_DIR_MODE;

/// Every integer setting, for the binding to export.
pub const INTS: [IntSetting; 5] = [
    BUFFER_SIZE,
    EMERGENCY_BUFFER_SIZE,
    SEGMENT_SIZE_MB,
    EMERGENCY_POLL_US,
    SPIN_LIMIT_US,
];
/// Every number setting.
pub const NUMBERS: [NumberSetting; 2] = [FLUSH_INTERVAL_MS, CLOCK_CHECK_INTERVAL_S];
/// Every choice setting.
pub const CHOICES: [ChoiceSetting; 3] = [OVERFLOW_POLICY, IDLE_STRATEGY, ENGINE];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_key_and_the_rule() {
        assert_eq!(BUFFER_SIZE.check(1024), Ok(1024));
        let e = BUFFER_SIZE.check(1000).unwrap_err();
        assert!(
            e.contains("buffer_size") && e.contains("power of two"),
            "{e}"
        );
        assert!(BUFFER_SIZE.check(1 << 25).is_err() && BUFFER_SIZE.check(32).is_err());
        assert!(SPIN_LIMIT_US.check(0).is_ok() && SPIN_LIMIT_US.check(1001).is_err());
        assert!(
            FLUSH_INTERVAL_MS.check(0.0).is_err() && FLUSH_INTERVAL_MS.check(f64::NAN).is_err()
        );
        assert_eq!(ENGINE.check("direct"), Ok(1));
        assert!(ENGINE
            .check("Direct")
            .unwrap_err()
            .contains("rings, direct"));
        for s in INTS {
            assert_eq!(s.check(s.default), Ok(s.default), "{}", s.key);
        }
        for s in NUMBERS {
            assert_eq!(s.check(s.default), Ok(s.default), "{}", s.key);
        }
    }
}
