"""The gate reads the control plane's shared table itself: an operator's halt closes `allows()`
the moment the table is published, before (and without) the watcher's callback into Python."""

from __future__ import annotations

from killswitch_audit import AuditLogger, default_config
from killswitch_audit._native import ControlTable
from killswitch_audit.killswitch import KillSwitch, Scope


def test_allows_consults_the_mapped_table_without_any_callback(tmp_path):
    path = tmp_path / "state"
    ControlTable.create(str(path))
    writer = ControlTable(str(path), writable=True)
    with AuditLogger(tmp_path / "log", segment_size_mb=1) as lg:
        ks = KillSwitch(lg, latency_monitor=False, config=default_config(), join_control=False)
        ks._core.attach_control(ControlTable(str(path)))  # mapped read-only, as a member does
        mm = Scope(account="A", strategy="mm", symbol_id=7, venue="V")
        arb = Scope(account="A", strategy="arb", symbol_id=7, venue="V")
        assert ks.allows(mm) and ks.allows(arb)
        writer.publish([{"state": 2, "strategy": "mm", "scope_id": 5}])
        assert not ks.allows(mm)  # no watcher, no Python: the mapping itself
        assert ks.allows(arb)
        writer.publish([{"state": 1}])  # firm reduce-only
        assert not ks.allows(arb) and ks.allows(arb, reduces_position=True)
        writer.publish([])
        assert ks.allows(mm) and ks.allows(arb)
        ks._core.attach_control(None)


def test_an_explicit_join_attaches_the_table_before_any_watcher_callback(tmp_path):
    """`control.join(ks, ...)` called by hand (not only the automatic join) hands the gate the
    mapped table: with the GIL held by this thread, the watcher cannot run its callback, and
    `allows()` answers no all the same."""
    import sys

    from killswitch_audit.control import init_directory, join

    lay = init_directory(tmp_path / "control")
    writer = ControlTable(str(lay.state), writable=True)
    with AuditLogger(tmp_path / "log", segment_size_mb=1) as lg:
        ks = KillSwitch(lg, latency_monitor=False, config=default_config(), join_control=False)
        m = join(ks, default_config(), location=str(lay.root))
        old = sys.getswitchinterval()
        sys.setswitchinterval(30.0)  # this thread keeps the GIL: no callback can run
        try:
            writer.publish([{"state": 2, "scope_id": 1}])
            closed = not ks.allows(Scope(account="A"))
        finally:
            sys.setswitchinterval(old)
        assert closed
        m.close()
