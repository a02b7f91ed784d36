"""`emergency_stop`: the gate flips before the handlers run, handlers are isolated and audited,
the records go through the emergency ring, the call never raises, reasons map to the enum,
concurrent triggers are all audited, the monitor gets the latency."""

from __future__ import annotations

import logging
import threading
import time

from killswitch_audit import (
    AuditLogger,
    KillSwitchReason,
    RecordKind,
    TradingState,
    default_config,
    verify_audit_log,
)
from killswitch_audit.format import REC_FLAG_EMERGENCY
from killswitch_audit.killswitch import (
    KillSwitch,
    StopStep,
    reason_code,
)
from killswitch_support import (
    ORDER_MM,
    make_ks,
    records,
    texts,
)


def test_handler_that_raises_is_audited_and_the_next_handler_still_runs(logger, caplog):
    ks = make_ks(logger)
    ran = []
    ks.add_stop_handler(lambda: ran.append("first"), name="first")

    def broken():
        raise RuntimeError("venue down")

    ks.add_stop_handler(broken)
    ks.add_stop_handler(lambda: ran.append("third"), name="third")
    with caplog.at_level(logging.ERROR, logger="killswitch_audit"):
        rep = ks.emergency_stop(KillSwitchReason.DAILY_LOSS_LIMIT, 7, 100, -5)
    assert ran == ["first", "third"]
    assert [h.ok for h in rep.handlers] == [True, False, True]
    assert "venue down" in rep.handlers[1].error
    assert "venue down" in caplog.text
    fails = records(logger, RecordKind.HANDLER_FAILURE)
    assert len(fails) == 1 and fails[0].code == 1 and fails[0].c == rep.seq
    assert "broken" in texts(logger)[fails[0].seq]
    assert ks.handler_failures == 1


def test_emergency_stop_flips_the_gate_before_the_first_handler_runs(logger):
    ks = make_ks(logger)
    seen = []
    ks.add_stop_handler(lambda: seen.append(ks.allows(ORDER_MM)))
    ks.emergency_stop("manual")
    assert seen == [False]


def test_kill_switch_and_state_change_records_come_through_the_emergency_ring(logger):
    ks = make_ks(logger)
    rep = ks.emergency_stop("DAILY_LOSS_LIMIT", 7, 250, -123_456)
    (k,) = records(logger, RecordKind.KILL_SWITCH)
    (s,) = records(logger, RecordKind.STATE_CHANGE)
    assert k.seq == rep.seq and k.flags & REC_FLAG_EMERGENCY and s.flags & REC_FLAG_EMERGENCY
    assert (k.code, k.symbol_id, k.a, k.b, k.c) == (1, 7, 250, -123_456, 0)
    assert (s.code, s.a, s.b, s.c) == (int(TradingState.HALTED), 0, 1, 0)
    assert s.seq == k.seq + 1


def test_stop_steps_are_recorded_with_increasing_times(logger):
    ks = make_ks(logger)
    ks.add_stop_handler(lambda: None)
    ks.add_stop_handler(lambda: time.sleep(0.002))
    rep = ks.emergency_stop("manual", wait_durable=2.0)
    steps = {r.code: r for r in records(logger, RecordKind.STOP_STEP) if r.c == rep.seq}
    order = [
        StopStep.BLOCKED,
        StopStep.HANDLER_BASE,
        StopStep.HANDLER_BASE + 1,
        StopStep.HANDLERS_DONE,
        StopStep.DURABLE,
    ]
    assert sorted(steps) == sorted(order)
    times = [steps[c].a for c in order]
    assert times == sorted(times)
    assert steps[StopStep.HANDLER_BASE + 1].a - steps[StopStep.HANDLER_BASE].a >= 2_000_000
    assert steps[StopStep.HANDLER_BASE + 1].b >= 2_000_000  # the handler's own time
    assert steps[StopStep.BLOCKED].a <= steps[StopStep.BLOCKED].b  # blocked, then audited
    assert rep.trigger_to_block_ns <= rep.trigger_to_handlers_done_ns
    assert rep.trigger_to_handlers_done_ns == steps[StopStep.HANDLERS_DONE].a
    assert rep.durable is True and rep.ok


def test_emergency_stop_never_raises_even_with_a_closed_logger(logdir):
    lg = AuditLogger(logdir)
    ks = make_ks(lg)
    ran = []
    ks.add_stop_handler(lambda: ran.append(1))
    lg.close()
    rep = ks.emergency_stop("manual", wait_durable=0.5)
    assert ran == [1]
    assert not ks.allows(ORDER_MM)  # the gate holds although nothing could be audited
    assert rep.seq == -1 and not rep.ok
    assert any("closed" in e for e in rep.errors)
    assert ks.audit_failures >= 1


def test_emergency_stop_never_raises_on_bad_arguments_and_keeps_the_record(logger):
    ks = make_ks(logger)
    rep = ks.emergency_stop(object(), symbol_id=-1, position_size=1 << 70, pnl_cents="x")
    assert rep.seq >= 0 and rep.errors
    (k,) = records(logger, RecordKind.KILL_SWITCH)
    assert k.code == int(KillSwitchReason.OTHER) and (k.symbol_id, k.a, k.b) == (0, 0, 0)
    rep = ks.emergency_stop("manual", scope="not a scope")
    assert ks.trading_state() == TradingState.HALTED  # a bad scope fails closed: the firm
    assert any("bad scope" in e for e in rep.errors)


def test_handler_raising_base_exception_does_not_escape(logger):
    ks = make_ks(logger)
    ran = []

    def exits():
        raise SystemExit(3)

    ks.add_stop_handler(exits)
    ks.add_stop_handler(lambda: ran.append(1))
    rep = ks.emergency_stop("manual")
    assert ran == [1] and not rep.handlers[0].ok


def test_reason_strings_map_to_the_enum_in_any_case():
    assert reason_code("daily_loss_limit") == (int(KillSwitchReason.DAILY_LOSS_LIMIT), None)
    assert reason_code("Daily_Loss_Limit") == (int(KillSwitchReason.DAILY_LOSS_LIMIT), None)
    assert reason_code(" position limit ") == (int(KillSwitchReason.POSITION_LIMIT), None)
    assert reason_code(KillSwitchReason.DRAWDOWN) == (int(KillSwitchReason.DRAWDOWN), None)
    assert reason_code(4) == (4, None)
    assert reason_code(True) == (int(KillSwitchReason.OTHER), "True")
    assert reason_code(70_000) == (int(KillSwitchReason.OTHER), "70000")


def test_unknown_reason_maps_to_other_and_its_text_is_kept_and_counted(logger):
    ks = make_ks(logger)
    rep = ks.emergency_stop("fat finger on desk 3")
    ks.emergency_stop("fat finger on desk 3")
    (k1, _k2) = records(logger, RecordKind.KILL_SWITCH)
    assert k1.code == int(KillSwitchReason.OTHER) == rep.reason
    assert texts(logger)[rep.seq] == "reason:fat finger on desk 3"
    assert ks.unknown_reasons["fat finger on desk 3"] == 2


def test_concurrent_triggers_from_many_threads_are_all_audited(logger):
    ks = make_ks(logger)
    calls = []
    ks.add_stop_handler(lambda: calls.append(1))
    n_threads, per = 8, 50
    barrier = threading.Barrier(n_threads)
    seqs: list[int] = []

    def worker(i):
        barrier.wait()
        for j in range(per):
            seqs.append(ks.emergency_stop("manual", symbol_id=i, position_size=j).seq)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ks_recs = records(logger, RecordKind.KILL_SWITCH)
    assert len(ks_recs) == n_threads * per == len(calls)
    assert sorted(r.seq for r in ks_recs) == sorted(seqs)
    assert {(r.symbol_id, r.a) for r in ks_recs} == {
        (i, j) for i in range(n_threads) for j in range(per)
    }
    assert verify_audit_log(logger.directory).ok


def test_trigger_while_halted_is_audited_again_and_reruns_handlers(logger):
    ks = make_ks(logger)
    calls = []
    ks.add_stop_handler(lambda: calls.append(1))
    ks.emergency_stop("manual")
    ks.emergency_stop("daily_loss_limit")
    assert len(calls) == 2
    changes = records(logger, RecordKind.STATE_CHANGE)
    assert [(r.a, r.code) for r in changes] == [(0, 2), (2, 2)]


def test_emergency_stop_latency_is_recorded_in_the_monitor(logger):
    from killswitch_audit.monitor import LatencyMonitor

    mon = LatencyMonitor(default_config())
    try:
        ks = KillSwitch(logger, mon, default_config())
        for _ in range(5):
            ks.emergency_stop("manual")
        assert mon.get_analysis("emergency_stop")["count"] == 5
        assert mon.get_analysis("kill_switch_audit")["count"] == 5
    finally:
        mon.close()
