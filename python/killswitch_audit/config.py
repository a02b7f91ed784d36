"""Configuration: YAML in, frozen dataclasses out (schema: config/high_perf_audit_config.yaml).

`load_config(path=None)` reads a YAML file (None: `$KILLSWITCH_AUDIT_CONFIG`, else the default
that ships inside the package); `AuditConfig.from_dict(d, source=...)` checks a mapping;
`default_config()` is the packaged default. Every key may be omitted (its default applies);
an unknown key, a wrong type (a bool is not an int, a float is not an int), a zero, negative
or absurd value, a ring size that is not a power of two, a YAML syntax error or a missing
file raises `ConfigError` naming the file, the dotted key and why.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Optional, Union

import yaml

from . import _native  # type: ignore[attr-defined]
from .errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "AlertConfig",
    "AuditConfig",
    "AuditSystemConfig",
    "ClockConfig",
    "ControlConfig",
    "KillSwitchConfig",
    "PerformanceConfig",
    "RepeatedExecutionsConfig",
    "ResetConfig",
    "TargetLatencies",
    "TriggerConfig",
    "default_config",
    "load_config",
]

CONFIG_ENV = "KILLSWITCH_AUDIT_CONFIG"
_PACKAGED = "default_config.yaml"
_SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}
_I64_MAX = (1 << 63) - 1

# --------------------------------------------------------------------------------------------
# value specs


class _Spec:
    nullable = False

    def check(self, value: Any, err) -> Any:  # err(why) raises ConfigError
        raise NotImplementedError


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, int):
        return "an int"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return f"a string ({v!r})"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


class _Int(_Spec):
    def __init__(self, lo: int, hi: int, *, pow2: bool = False, nullable: bool = False):
        self.lo, self.hi, self.pow2, self.nullable = lo, hi, pow2, nullable

    def describe(self) -> str:
        what = "a power of two" if self.pow2 else "an int"
        return f"{what} in {self.lo}..{self.hi}"

    def check(self, value: Any, err) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            err(f"must be {self.describe()}, got {_type_name(value)}")
        if value < self.lo or value > self.hi:
            if value <= 0 < self.lo:
                err(f"must be positive ({self.describe()}), got {value}")
            err(f"{value} is out of range: must be {self.describe()}")
        if self.pow2 and value & (value - 1):
            lower = 1 << (value.bit_length() - 1)
            err(f"{value} is not a power of two (try {lower} or {lower * 2})")
        return value


class _Num(_Spec):
    """int or float (not bool); `lo_open`: the lower bound itself is excluded."""

    def __init__(self, lo: float, hi: float, *, lo_open: bool = True, nullable: bool = False):
        self.lo, self.hi, self.lo_open, self.nullable = lo, hi, lo_open, nullable

    def describe(self) -> str:
        lo = "(" if self.lo_open else "["
        return f"a number in {lo}{self.lo:g}, {self.hi:g}]"

    def check(self, value: Any, err) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            err(f"must be {self.describe()}, got {_type_name(value)}")
        if value != value:  # NaN
            err("must be a number, got NaN")
        too_low = value <= self.lo if self.lo_open else value < self.lo
        if too_low or value > self.hi:
            if value <= 0 and self.lo_open and self.lo == 0:
                err(f"must be greater than zero, got {value}")
            err(f"{value} is out of range: must be {self.describe()}")
        return value


class _Mode(_Spec):
    """A permission mode (an int, in YAML best written 0o640 or 0640), without world-write."""

    def check(self, value: Any, err) -> Any:
        if isinstance(value, str) and value.strip().lstrip("0o").isdigit():
            try:
                value = int(value.strip().replace("0o", "", 1), 8)
            except ValueError:
                err(f"{value!r} is not an octal permission mode such as 0640")
        if isinstance(value, bool) or not isinstance(value, int):
            err(f"must be a permission mode such as 0640, got {_type_name(value)}")
        if not 0 <= value <= 0o777:
            err(f"{value:#o} is not a permission mode (0o000..0o777)")
        if value & 0o002:
            err(f"{value:#o} is world-writable: audit files must not be writable by others")
        return value


class _Bool(_Spec):
    def check(self, value: Any, err) -> Any:
        if not isinstance(value, bool):
            err(f"must be true or false, got {_type_name(value)}")
        return value


class _Choice(_Spec):
    def __init__(self, *choices: str):
        self.choices = choices

    def check(self, value: Any, err) -> Any:
        if not isinstance(value, str):
            err(f"must be one of {', '.join(self.choices)}; got {_type_name(value)}")
        v = value.strip().lower()
        if v not in self.choices:
            close = difflib.get_close_matches(v, self.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            err(f"{value!r} is not one of {', '.join(self.choices)}{hint}")
        return v


class _Str(_Spec):
    def __init__(self, *, nullable: bool = False):
        self.nullable = nullable

    def check(self, value: Any, err) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, str):
            err(f"must be a string, got {_type_name(value)}")
        if not value.strip():
            err("must not be empty")
        return value


class _Section(_Spec):
    def __init__(self, cls: type, *, nullable: bool = False):
        self.cls, self.nullable = cls, nullable

    def check(self, value: Any, err) -> Any:  # handled by _build
        raise AssertionError


def _f(default: Any, spec: _Spec) -> Any:
    if isinstance(spec, _Section):
        if spec.nullable:
            return field(default=None, metadata={"spec": spec})
        return field(default_factory=spec.cls, metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


#: The logger settings' defaults and limits: the core owns them (ksa_core::logger::settings);
#: the fields below that use `_core` apply them, so YAML, Python and the core cannot disagree.
_CORE_SETTINGS: dict[str, dict[str, Any]] = _native.logger_settings()


def _core(key: str) -> Any:
    """A field whose default and limits are the core's setting `key`."""
    s = _CORE_SETTINGS[key]
    spec: _Spec
    if "choices" in s:
        spec = _Choice(*s["choices"])
    elif "min" in s:
        spec = _Int(s["min"], s["max"], pow2=s["pow2"])
    elif "max" in s:
        spec = _Num(0, s["max"])
    elif isinstance(s["default"], bool):
        spec = _Bool()
    else:
        spec = _Mode()
    return _f(s["default"], spec)


# --------------------------------------------------------------------------------------------
# the dataclasses (field names = YAML keys)


@dataclass(frozen=True, **_SLOTS)
class AuditSystemConfig:
    directory: str = _f("./audit_logs", _Str())
    buffer_size: int = _core("buffer_size")
    emergency_buffer_size: int = _core("emergency_buffer_size")
    flush_interval_ms: float = _core("flush_interval_ms")
    emergency_poll_us: int = _core("emergency_poll_us")
    idle_strategy: str = _core("idle_strategy")
    segment_size_mb: int = _core("segment_size_mb")
    overflow_policy: str = _core("overflow_policy")
    spin_limit_us: int = _core("spin_limit_us")
    kill_switch_priority: bool = _f(True, _Bool())
    zero_copy_logging: bool = _f(True, _Bool())
    #: `rings` (the caller pushes into a ring; Rust threads write the file) or `direct` (the
    #: rollback engine: each call writes its record itself; no rings, no threads)
    engine: str = _core("engine")
    durable_kill_switch: bool = _core("durable_kill_switch")
    hmac_key_env: Optional[str] = _f("KILLSWITCH_AUDIT_HMAC_KEY", _Str(nullable=True))
    #: mode of the segment files and stats.bin (set exactly, whatever the umask)
    file_mode: int = _core("file_mode")
    #: mode of the log directory when the logger creates it
    dir_mode: int = _core("dir_mode")

    def hmac_key(self) -> Optional[bytes]:
        """The HMAC key from the environment variable `hmac_key_env` (None: unset/null)."""
        from .format import parse_hmac_key  # the one parser of keys

        if not self.hmac_key_env:
            return None
        try:
            return parse_hmac_key(os.environ.get(self.hmac_key_env))
        except ValueError:
            raise ConfigError(
                f"${self.hmac_key_env}: audit_system.hmac_key_env: the variable must hold a "
                "hex key",
                path=f"${self.hmac_key_env}",
                key="audit_system.hmac_key_env",
            ) from None

    def logger_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `AuditLogger(directory, **kwargs)` (all but the clock's)."""
        return {
            "buffer_size": self.buffer_size,
            "emergency_buffer_size": self.emergency_buffer_size,
            "flush_interval_ms": self.flush_interval_ms,
            "emergency_poll_us": self.emergency_poll_us,
            "idle_strategy": self.idle_strategy,
            "segment_size_mb": self.segment_size_mb,
            "overflow_policy": self.overflow_policy,
            "spin_limit_us": self.spin_limit_us,
            "hmac_key": self.hmac_key(),
            "durable_kill_switch": self.durable_kill_switch,
            "file_mode": self.file_mode,
            "dir_mode": self.dir_mode,
            "engine": self.engine,
        }


@dataclass(frozen=True, **_SLOTS)
class TargetLatencies:
    kill_switch_audit: float = _f(1.0, _Num(0, 1e6))
    trade_audit: float = _f(1.0, _Num(0, 1e6))
    emergency_stop: float = _f(5.0, _Num(0, 1e6))


@dataclass(frozen=True, **_SLOTS)
class AlertConfig:
    latency_breach_threshold: float = _f(20.0, _Num(0, 1e7))
    regression_target_p99_97: float = _f(10.0, _Num(0, 1e7))
    buffer_pressure_threshold: float = _f(0.8, _Num(0, 1.0))
    rate_limit_s: float = _f(1.0, _Num(0, 86_400, lo_open=False))


@dataclass(frozen=True, **_SLOTS)
class PerformanceConfig:
    target_latencies: TargetLatencies = field(
        default_factory=TargetLatencies, metadata={"spec": _Section(TargetLatencies)}
    )
    alerts: AlertConfig = field(
        default_factory=AlertConfig, metadata={"spec": _Section(AlertConfig)}
    )
    window_s: float = _f(60, _Num(0, 86_400))


@dataclass(frozen=True, **_SLOTS)
class ResetConfig:
    require_second_operator: bool = _f(False, _Bool())


@dataclass(frozen=True, **_SLOTS)
class RepeatedExecutionsConfig:
    count: int = _f(5, _Int(1, 1_000_000))
    window_s: float = _f(1.0, _Num(0, 86_400))


@dataclass(frozen=True, **_SLOTS)
class TriggerConfig:
    daily_loss_limit_cents: Optional[int] = _f(None, _Int(1, _I64_MAX, nullable=True))
    max_drawdown_cents: Optional[int] = _f(None, _Int(1, _I64_MAX, nullable=True))
    max_position: Optional[int] = _f(None, _Int(1, _I64_MAX, nullable=True))
    max_messages_per_s: Optional[int] = _f(None, _Int(1, 1_000_000_000, nullable=True))
    repeated_executions: Optional[RepeatedExecutionsConfig] = field(
        default=None, metadata={"spec": _Section(RepeatedExecutionsConfig, nullable=True)}
    )


@dataclass(frozen=True, **_SLOTS)
class KillSwitchConfig:
    reset: ResetConfig = field(
        default_factory=ResetConfig, metadata={"spec": _Section(ResetConfig)}
    )
    wait_durable_ms: float = _f(0, _Num(0, 60_000, lo_open=False))
    triggers: TriggerConfig = field(
        default_factory=TriggerConfig, metadata={"spec": _Section(TriggerConfig)}
    )


@dataclass(frozen=True, **_SLOTS)
class ClockConfig:
    max_error_us: float = _f(100, _Num(0, 1e9))
    check_interval_s: float = _core("clock_check_interval_s")


# ---- control plane (issue 14; owned by killswitch_audit.control, docs/CONTROL.md) ----------


@dataclass(frozen=True, **_SLOTS)
class ControlConfig:
    #: control directory or nats:// URL; null: `$KILLSWITCH_AUDIT_CONTROL`, else not joined
    #: (the CLI then uses the per-user default under $XDG_RUNTIME_DIR or /tmp)
    directory: Optional[str] = _f(None, _Str(nullable=True))
    #: what a joined process does when the state file is unreadable, invalid or removed, or
    #: (NATS) no server of the URL is connected
    on_control_loss: str = _f("reduce", _Choice("halt", "reduce", "none"))
    #: how long the state file may be bad (NATS: disconnected) before `on_control_loss` (s)
    loss_after_s: float = _f(5.0, _Num(0, 86_400))
    #: presence heartbeat period of a joined process (s)
    heartbeat_s: float = _f(1.0, _Num(0, 3_600))
    #: a control-plane reset must name a second, different operator
    require_second_operator: bool = _f(False, _Bool())
    #: how long `halt`/`reset` wait for every live joined process to ack (s)
    ack_timeout_s: float = _f(5.0, _Num(0, 3_600))
    #: group that owns a new control directory (operators); null: the creator's group
    group: Optional[str] = _f(None, _Str(nullable=True))


# ---- end of the control plane's block ------------------------------------------------------


@dataclass(frozen=True, **_SLOTS)
class AuditConfig:
    audit_system: AuditSystemConfig = field(
        default_factory=AuditSystemConfig, metadata={"spec": _Section(AuditSystemConfig)}
    )
    performance: PerformanceConfig = field(
        default_factory=PerformanceConfig, metadata={"spec": _Section(PerformanceConfig)}
    )
    kill_switch: KillSwitchConfig = field(
        default_factory=KillSwitchConfig, metadata={"spec": _Section(KillSwitchConfig)}
    )
    clock: ClockConfig = field(
        default_factory=ClockConfig, metadata={"spec": _Section(ClockConfig)}
    )
    control: ControlConfig = field(
        default_factory=ControlConfig, metadata={"spec": _Section(ControlConfig)}
    )
    #: where this config came from (a file path, "<dict>" or the packaged default)
    source: str = field(default="<default>", compare=False, metadata={"spec": None})

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> AuditConfig:
        """Check a mapping against the schema; `ConfigError` names `source`, key and why."""
        cfg = _build(cls, d, "", source)
        return _replace_source(cfg, source)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML keys), without `source`."""
        return _to_dict(self)


def _replace_source(cfg: AuditConfig, source: str) -> AuditConfig:
    object.__setattr__(cfg, "source", source)
    return cfg


def _to_dict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj) if f.name != "source"}
    return obj


# --------------------------------------------------------------------------------------------
# building


def _all_keys() -> dict[str, list[str]]:
    """Every leaf/section key name -> the dotted paths where it is valid."""
    out: dict[str, list[str]] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in fields(cls):
            spec = f.metadata.get("spec")
            if spec is None:
                continue
            dotted = f"{prefix}{f.name}"
            out.setdefault(f.name, []).append(dotted)
            if isinstance(spec, _Section):
                walk(spec.cls, dotted + ".")

    walk(AuditConfig, "")
    return out


#: Keys that existed once, with what to write instead (a clear error, never a silent ignore).
_REMOVED: dict[str, dict[str, str]] = {
    "audit_system.": {
        "backend": "removed with the pure-Python writer; the rollback engine is "
        "'audit_system.engine: direct' (each call writes its record itself, no rings, no "
        "threads), the default 'audit_system.engine: rings'",
    },
}


def _build(cls: type, d: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "<top level>"

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{source}: {key}: {why}", path=source, key=key)

    if d is None:
        d = {}
    if not isinstance(d, dict):
        fail(where, f"must be a mapping of keys, got {_type_name(d)}")
    known = {f.name: f for f in fields(cls) if f.metadata.get("spec") is not None}
    for k in d:
        if not isinstance(k, str):
            fail(f"{prefix}{k}", f"keys must be strings, got {_type_name(k)}")
        if k in _REMOVED.get(prefix, {}):
            fail(f"{prefix}{k}", _REMOVED[prefix][k])
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1, cutoff=0.6)
            if close:
                hint = f" (did you mean '{prefix}{close[0]}'?)"
            else:
                elsewhere = _all_keys().get(k)
                hint = f" (it belongs at {elsewhere[0]})" if elsewhere else ""
            valid = ", ".join(sorted(known))
            fail(f"{prefix}{k}", f"unknown key{hint}; valid keys here: {valid}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        spec = f.metadata["spec"]
        dotted = f"{prefix}{name}"
        if name not in d:
            continue  # the dataclass default applies
        value = d[name]
        if isinstance(spec, _Section):
            if value is None and spec.nullable:
                kwargs[name] = None
            else:
                kwargs[name] = _build(spec.cls, value, dotted + ".", source)
            continue

        def err(why: str, _dotted: str = dotted) -> None:
            fail(_dotted, why)

        kwargs[name] = spec.check(value, err)
    obj = cls(**kwargs)
    if cls is AuditSystemConfig and not obj.kill_switch_priority:
        fail(
            f"{prefix}kill_switch_priority",
            "must be true: kill-switch records always go through the emergency ring",
        )
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, Any] = {}
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:
            dup = False
        if dup:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(
            f"{source}: YAML syntax error at {where}: {problem}", path=source, key=None
        ) from None


def load_config(path: Union[str, os.PathLike, None] = None) -> AuditConfig:
    """Load and check a YAML config. `path=None`: `$KILLSWITCH_AUDIT_CONFIG` when set, else
    the packaged default."""
    if path is None:
        env = os.environ.get(CONFIG_ENV, "").strip()
        if not env:
            return default_config()
        path = env
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found", path=p) from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file", path=p) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config file: {e}", path=p) from None
    return AuditConfig.from_dict(_parse_yaml(text, p), source=p)


def packaged_default_text() -> str:
    """The YAML text of the packaged default config."""
    try:
        from importlib.resources import files

        return files(__package__ or "killswitch_audit").joinpath(_PACKAGED).read_text("utf-8")
    except (ImportError, AttributeError, FileNotFoundError, ModuleNotFoundError):
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), _PACKAGED)
        with open(here, encoding="utf-8") as fh:
            return fh.read()


@lru_cache(maxsize=1)
def default_config() -> AuditConfig:
    """The packaged default config (`killswitch_audit/default_config.yaml`)."""
    source = f"<package>/{_PACKAGED}"
    return AuditConfig.from_dict(_parse_yaml(packaged_default_text(), source), source=source)
