"""YAML config: every error names the file, the dotted key and why; the default loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from killswitch_audit.config import (
    CONFIG_ENV,
    AuditConfig,
    default_config,
    load_config,
    packaged_default_text,
)
from killswitch_audit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
REPO_DEFAULT = ROOT / "config" / "high_perf_audit_config.yaml"
PACKAGED = ROOT / "python" / "killswitch_audit" / "default_config.yaml"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "audit.yaml"
    p.write_text(text)
    return p


def test_default_config_loads_and_matches_the_schema_defaults():
    cfg = default_config()
    assert cfg == AuditConfig(), "the YAML and the dataclass defaults say the same"
    a = cfg.audit_system
    assert (a.buffer_size, a.emergency_buffer_size, a.flush_interval_ms) == (131072, 16384, 2)
    assert a.engine == "rings" and a.overflow_policy == "drop" and a.kill_switch_priority
    assert cfg.performance.target_latencies.kill_switch_audit == 1.0
    assert cfg.performance.alerts.latency_breach_threshold == 20.0
    assert cfg.kill_switch.triggers.daily_loss_limit_cents is None
    assert cfg.clock.max_error_us == 100
    assert load_config(REPO_DEFAULT) == cfg
    with pytest.raises(AttributeError):
        cfg.audit_system = None  # frozen


def test_packaged_copy_is_identical_to_the_repository_config():
    assert PACKAGED.read_bytes() == REPO_DEFAULT.read_bytes()
    assert packaged_default_text() == REPO_DEFAULT.read_text()


def test_env_var_names_the_config(tmp_path, monkeypatch):
    p = write(tmp_path, "audit_system:\n  buffer_size: 1024\n  engine: direct\n")
    monkeypatch.setenv(CONFIG_ENV, str(p))
    cfg = load_config()
    assert cfg.audit_system.buffer_size == 1024 and cfg.audit_system.engine == "direct"
    assert cfg.audit_system.emergency_buffer_size == 16384, "omitted keys keep their default"
    assert cfg.source == str(p)
    monkeypatch.delenv(CONFIG_ENV)
    assert load_config() == default_config()


def test_partial_config_and_triggers(tmp_path):
    p = write(
        tmp_path,
        "kill_switch:\n  triggers:\n    daily_loss_limit_cents: 2500000\n"
        "    repeated_executions: {count: 3, window_s: 0.5}\n",
    )
    t = load_config(p).kill_switch.triggers
    assert t.daily_loss_limit_cents == 2_500_000
    assert (t.repeated_executions.count, t.repeated_executions.window_s) == (3, 0.5)
    assert AuditConfig.from_dict({}).to_dict() == default_config().to_dict()


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        # unknown keys, with a did-you-mean
        ("audit_system:\n  buffer_sise: 1024\n", "audit_system.buffer_sise", "buffer_size"),
        ("audit_sytem:\n  buffer_size: 1024\n", "audit_sytem", "audit_system"),
        ("buffer_size: 1024\n", "buffer_size", "audit_system.buffer_size"),
        (
            "performance:\n  alerts:\n    rate_limit: 1\n",
            "performance.alerts.rate_limit",
            "rate_limit_s",
        ),
        # wrong types (a bool is not an int, a float is not an int)
        ("audit_system:\n  buffer_size: true\n", "audit_system.buffer_size", "bool"),
        ("audit_system:\n  buffer_size: 2048.0\n", "audit_system.buffer_size", "number"),
        ("audit_system:\n  buffer_size: big\n", "audit_system.buffer_size", "string"),
        ("audit_system:\n  durable_kill_switch: 1\n", "audit_system.durable_kill_switch", "true"),
        ("audit_system:\n  directory: 5\n", "audit_system.directory", "string"),
        ("audit_system: 5\n", "audit_system", "mapping"),
        ("performance:\n  window_s: '60'\n", "performance.window_s", "string"),
        # zero, negative, absurd
        ("audit_system:\n  flush_interval_ms: 0\n", "audit_system.flush_interval_ms", "zero"),
        ("audit_system:\n  flush_interval_ms: -2\n", "audit_system.flush_interval_ms", "zero"),
        ("audit_system:\n  segment_size_mb: 0\n", "audit_system.segment_size_mb", "positive"),
        ("audit_system:\n  segment_size_mb: 100000\n", "audit_system.segment_size_mb", "range"),
        ("audit_system:\n  buffer_size: 1073741824\n", "audit_system.buffer_size", "range"),
        ("audit_system:\n  flush_interval_ms: .nan\n", "audit_system.flush_interval_ms", "NaN"),
        (
            "performance:\n  alerts:\n    buffer_pressure_threshold: 1.5\n",
            "performance.alerts.buffer_pressure_threshold",
            "range",
        ),
        (
            "kill_switch:\n  triggers:\n    max_position: -1\n",
            "kill_switch.triggers.max_position",
            "positive",
        ),
        (
            "kill_switch:\n  triggers:\n    repeated_executions: {count: 0, window_s: 1}\n",
            "kill_switch.triggers.repeated_executions.count",
            "positive",
        ),
        # powers of two
        ("audit_system:\n  buffer_size: 100000\n", "audit_system.buffer_size", "power of two"),
        (
            "audit_system:\n  emergency_buffer_size: 1000\n",
            "audit_system.emergency_buffer_size",
            "power of two",
        ),
        # choices and the seed key that must stay true
        ("audit_system:\n  engine: drect\n", "audit_system.engine", "rings"),
        # a removed key says what replaced it
        ("audit_system:\n  backend: python\n", "audit_system.backend", "engine: direct"),
        ("audit_system:\n  overflow_policy: block\n", "audit_system.overflow_policy", "drop"),
        (
            "audit_system:\n  kill_switch_priority: false\n",
            "audit_system.kill_switch_priority",
            "emergency ring",
        ),
    ],
)
def test_each_config_error_names_file_key_and_why(tmp_path, text, key, why):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    err = e.value
    assert err.path == str(p) and err.key == key
    message = str(err)
    assert str(p) in message and key in message and why in message, message
    assert isinstance(err, ValueError), "ConfigError is also a ValueError"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "audit_system:\n  buffer_size: [1024\n  engine: rings\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.path == str(p) and "line" in str(e.value) and str(p) in str(e.value)


def test_duplicate_key_is_an_error(tmp_path):
    p = write(tmp_path, "audit_system:\n  buffer_size: 1024\n  buffer_size: 2048\n")
    with pytest.raises(ConfigError, match="duplicate key 'buffer_size'") as e:
        load_config(p)
    assert e.value.path == str(p)


def test_missing_file_and_directory_are_config_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as e:
        load_config(missing)
    assert e.value.path == str(missing)
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_top_level_must_be_a_mapping_and_empty_file_is_the_default(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    assert load_config(write(tmp_path, "# nothing set\n")) == default_config()


def test_from_dict_names_its_source():
    with pytest.raises(ConfigError) as e:
        AuditConfig.from_dict({"clock": {"max_error_us": 0}}, source="orchestrator.toml")
    assert e.value.path == "orchestrator.toml" and e.value.key == "clock.max_error_us"


def test_hmac_key_from_env_and_logger_kwargs(monkeypatch):
    a = default_config().audit_system
    monkeypatch.setenv("KILLSWITCH_AUDIT_HMAC_KEY", "00ff" * 8)
    assert a.hmac_key() == bytes.fromhex("00ff" * 8)
    kwargs = a.logger_kwargs()
    assert kwargs["buffer_size"] == 131072 and kwargs["hmac_key"] == bytes.fromhex("00ff" * 8)
    assert kwargs["engine"] == "rings"
    monkeypatch.setenv("KILLSWITCH_AUDIT_HMAC_KEY", "zz")
    with pytest.raises(ConfigError, match="hex") as e:
        a.hmac_key()
    assert e.value.key == "audit_system.hmac_key_env"
    monkeypatch.delenv("KILLSWITCH_AUDIT_HMAC_KEY")
    assert a.hmac_key() is None


def test_the_core_owns_the_logger_settings_and_config_applies_them(tmp_path):
    """Defaults and limits are written once (rust/core/src/logger/settings.rs): the YAML
    schema, the AuditLogger constructor and the core agree on each."""
    from killswitch_audit import _native

    core = _native.logger_settings()
    a, clock = default_config().audit_system, default_config().clock
    for key, s in core.items():
        value = clock.check_interval_s if key == "clock_check_interval_s" else getattr(a, key)
        assert value == s["default"], key
    buf = core["buffer_size"]
    for bad in (buf["min"] // 2, buf["max"] * 2):
        p = write(tmp_path, f"audit_system:\n  buffer_size: {bad}\n")
        with pytest.raises(ConfigError, match=f"{buf['min']}..{buf['max']}"):
            load_config(p)
        with pytest.raises(ValueError, match=f"buffer_size must be a power of two in {buf['min']}"):
            _native.AuditLogger(tmp_path / "never", buffer_size=bad)
    assert not (tmp_path / "never").exists()
