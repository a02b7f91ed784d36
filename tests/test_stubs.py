"""The type stubs cannot drift: every public name has a stub, with the same parameters, and
every stub a return annotation that what the built module returns conforms to."""

from __future__ import annotations

import ast
import re
import typing
from datetime import datetime
from pathlib import Path

import killswitch_audit
import killswitch_audit.types as ktypes
import pytest

native = pytest.importorskip("killswitch_audit._native")
STUB = Path(killswitch_audit.__file__).with_name("_native.pyi")


def _stub_tree() -> dict[str, object]:
    tree = ast.parse(STUB.read_text())
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = node
    return out


def _stub_params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [p.arg for p in a.kwonlyargs]
    return [n for n in names if n not in ("self", "cls")]


def _runtime_params(obj: object) -> list[str]:
    text = getattr(obj, "__text_signature__", None)
    assert text, f"{obj!r} has no text signature"
    inner = text.strip()[1:-1]
    names = []
    for part in (p.strip() for p in inner.split(",")):
        if not part or part in ("/", "*") or part.startswith("$"):
            continue
        names.append(re.split(r"[=:]", part)[0].strip())
    return names


def _public_native_names() -> list[str]:
    return [n for n in dir(native) if not n.startswith("__")]


def test_every_native_name_has_a_stub():
    stubs = _stub_tree()
    missing = [n for n in _public_native_names() if n not in stubs]
    assert not missing, f"names without a stub in {STUB.name}: {missing}"
    extra = [n for n in stubs if not hasattr(native, n)]
    assert not extra, f"stubs for names the module does not have: {extra}"


@pytest.mark.parametrize("name", _public_native_names())
def test_stub_signatures_match_the_built_module(name):
    stub = _stub_tree()[name]
    obj = getattr(native, name)
    if isinstance(stub, ast.FunctionDef):
        assert _stub_params(stub) == _runtime_params(obj), name
        return
    assert isinstance(obj, type)
    for attr, value in vars(obj).items():
        if attr.startswith("__") and attr not in ("__enter__", "__exit__"):
            continue
        assert attr in stub, f"{name}.{attr} has no stub"
        if attr in stub and getattr(value, "__text_signature__", None):
            assert _stub_params(stub[attr]) == _runtime_params(value), f"{name}.{attr}"
    if getattr(obj, "__text_signature__", None) and "__new__" in stub:
        assert _stub_params(stub["__new__"]) == _runtime_params(obj), f"{name}()"


def test_every_name_in_all_imports():
    for name in killswitch_audit.__all__:
        assert getattr(killswitch_audit, name) is not None, name


def test_stub_and_marker_ship_in_the_package():
    pkg = Path(killswitch_audit.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_native.pyi").exists()


def _stub_functions() -> dict[str, ast.FunctionDef]:
    """Every function of the stub by dotted name (`AuditLogger.get_stats`, `crc32c`)."""
    out: dict[str, ast.FunctionDef] = {}
    for name, node in _stub_tree().items():
        if isinstance(node, dict):
            out.update({f"{name}.{m}": f for m, f in node.items()})
        else:
            out[name] = node  # type: ignore[assignment]
    return out


def test_every_stub_has_a_return_annotation():
    bare = [n for n, f in _stub_functions().items() if f.returns is None]
    assert not bare, f"stubs without a return annotation in {STUB.name}: {bare}"


def test_runtime_signatures_carry_no_return_type_to_compare():
    """PyO3's `__text_signature__` has parameters only; were a return type ever exposed, this
    fails so that the comparison below is extended to it."""
    exposed = [
        n
        for n in _public_native_names()
        for obj in [getattr(native, n)]
        for sig in [getattr(obj, "__text_signature__", None) or ""]
        if "->" in sig or "return" in (getattr(obj, "__annotations__", None) or {})
    ]
    assert not exposed, exposed


_NS: dict[str, object] = {
    **{n: getattr(typing, n) for n in ("Any", "Optional", "Union", "Callable")},
    "Path": Path,
    "datetime": datetime,
    **{n: getattr(ktypes, n) for n in ktypes.__all__},
    **{n: getattr(native, n) for n in _public_native_names()},
}


def _returns(name: str) -> object:
    return eval(ast.unparse(_stub_functions()[name].returns), _NS)  # our own stub file


def _conforms(v: object, t: object) -> bool:
    """A small runtime check of `v` against an annotation: enough for the stub's types."""
    if t is typing.Any:
        return True
    if t is None or t is type(None):
        return v is None
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Union:
        return any(_conforms(v, a) for a in args)
    if origin is typing.Literal:
        return v in args
    if typing.is_typeddict(t):
        hints = typing.get_type_hints(t)
        return (
            isinstance(v, dict)
            and t.__required_keys__ <= v.keys() <= hints.keys()  # type: ignore[attr-defined]
            and all(_conforms(x, hints[k]) for k, x in v.items())
        )
    if origin is tuple:
        return (
            isinstance(v, tuple)
            and len(v) == len(args)
            and all(_conforms(x, a) for x, a in zip(v, args))
        )
    if origin is list:
        return isinstance(v, list) and all(_conforms(x, args[0]) for x in v)
    if origin is dict:
        return isinstance(v, dict) and all(
            _conforms(k, args[0]) and _conforms(x, args[1]) for k, x in v.items()
        )
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, t)  # type: ignore[arg-type]


def _calls(tmp: Path, opened: list[typing.Any]) -> list[tuple[str, object]]:
    """(stub name, what the built module returned) for every cheap public call."""
    out: list[tuple[str, object]] = []
    log = tmp / "log"
    lg = native.AuditLogger(log, hmac_key=b"k" * 32)
    opened.append(lg)
    out += [
        ("AuditLogger.__enter__", lg.__enter__()),
        ("AuditLogger.audit_kill_switch", lg.audit_kill_switch(1, 2, 3, 4)),
        ("AuditLogger.audit_trade", lg.audit_trade(1, 2, 3, 4)),
        ("AuditLogger.audit", lg.audit(3, 0, 1)),
        ("AuditLogger.flush", lg.flush(5.0)),
        ("AuditLogger.flush_emergency", lg.flush_emergency(5.0)),
        ("AuditLogger.get_stats", lg.get_stats()),
        ("AuditLogger.closed", lg.closed),
        ("AuditLogger.directory", lg.directory),
        ("AuditLogger.recovery_notes", lg.recovery_notes),
        ("logger_hmac_key", native.logger_hmac_key(lg)),
    ]
    (tmp / "latch").mkdir()
    core = native.KillSwitchCore(None, str(tmp / "latch"))
    out += [
        ("KillSwitchCore.allows", core.allows(None, False)),
        ("KillSwitchCore.state", core.state(None)),
        ("KillSwitchCore.restrictions", core.restrictions()),
        ("KillSwitchCore.audits", core.audits),
        ("KillSwitchCore.denials", core.denials),
        ("KillSwitchCore.__len__", len(core)),
    ]
    out.append(("AuditLogger.close", lg.close()))
    out.append(("AuditLogger.__exit__", lg.__exit__(None, None, None)))
    seg = str(sorted(log.glob("*.seg"))[0])
    data = native.scan_segment_file(seg)
    dump = native.Dump(str(log))
    out += [
        ("log_slots", native.log_slots(str(log))),
        ("read_records", native.read_records(str(log))),
        ("scan_segment_file", data),
        ("verify_audit_log", native.verify_audit_log(str(log), b"k" * 32)),
        ("render_records", native.render_records(data["data"][:64])),
        ("restore_state", native.restore_state(str(log), b"k" * 32)),
        ("Dump.header", dump.header),
        ("Dump.render", dump.render(10)),
        ("Dump.damage", dump.damage),
        ("noop_audit", native.noop_audit(1, 2, 3, 4)),
        ("logger_settings", native.logger_settings()),
        ("crc32c", native.crc32c(b"abc")),
        ("crc32c_check", native.crc32c_check(b"abcd")),
        ("clock_sync_state", native.clock_sync_state()),
    ]
    r = native.read_records(str(log))[0][0]
    out += [
        (f"Record.{name}", getattr(r, name))
        for name in ("seq", "kind", "reason_code", "text", "wall_time", "crc_ok", "salvaged")
    ]
    out += [("Record.body", r.body()), ("Record.to_bytes", r.to_bytes())]
    out += [("Record.to_dict", r.to_dict()), ("Record.__hash__", hash(r))]
    mon = native.LatencyMonitor()
    opened.append(mon)
    probe = native.RingProbe()
    m = mon.measure("kill_switch_audit")
    out += [
        ("LatencyMonitor.record", mon.record("kill_switch_audit", 1500)),
        ("LatencyMonitor.measure", m),
        ("Measure.__enter__", m.__enter__()),
        ("Measure.__exit__", m.__exit__(None, None, None)),
        ("Measure.elapsed_ns", m.elapsed_ns),
        ("Measure.operation", m.operation),
        ("RingProbe.set", probe.set(0.5)),
        ("LatencyMonitor.attach_probe", mon.attach_probe(probe)),
        ("LatencyMonitor.get_analysis", mon.get_analysis("kill_switch_audit")),
        ("LatencyMonitor.get_kill_switch_analysis", mon.get_kill_switch_analysis(True)),
        ("LatencyMonitor.write_hlog", mon.write_hlog(tmp / "m.hlog")),
        ("LatencyMonitor.prometheus_text", mon.prometheus_text()),
        ("LatencyMonitor.evaluate", mon.evaluate()),
        ("LatencyMonitor.alerts_raised", mon.alerts_raised()),
        ("LatencyMonitor.operations", mon.operations()),
        ("LatencyMonitor.alerts_dropped", mon.alerts_dropped),
        ("LatencyMonitor.detach_probe", mon.detach_probe()),
        ("LatencyMonitor.close", mon.close(5.0)),
    ]
    return out


def test_what_the_module_returns_conforms_to_the_stub(tmp_path):
    opened: list[typing.Any] = []
    try:
        calls = _calls(tmp_path, opened)
    finally:
        for o in opened:  # idempotent; a failed call must not leave one open
            o.close()
    wrong = [
        f"{name} -> {ast.unparse(_stub_functions()[name].returns)} returned {v!r:.80}"
        for name, v in calls
        if not _conforms(v, _returns(name))
    ]
    assert not wrong, "\n".join(wrong)
