#!/usr/bin/env bash
# Instructions executed inside the core stop call (KillSwitchCore.stop, the PyO3 method and
# everything under it) for 1, 2 and 3 stops in a fresh process: callgrind counts instructions,
# not time, so the numbers repeat on a noisy machine. The difference between runs is the cost
# of one more stop; the 1-stop run also holds the warm-up stop KillSwitch.__init__ makes.
#   bash benches/callgrind_stop.sh
set -eu
PY="$(python3 -c 'import sys; print(sys.executable)')"  # the real binary, not a pyenv shim
script="$(mktemp --suffix=.py)"; out="$(mktemp -d)"
trap 'rm -rf "$script" "$out"' EXIT
cat > "$script" <<'PY'
import shutil, sys, tempfile
from killswitch_audit import AuditLogger, KillSwitch, KillSwitchReason, Scope
d = tempfile.mkdtemp()
lg = AuditLogger(d, segment_size_mb=1)
ks = KillSwitch(lg, latency_monitor=True, check_clock=False)
ks.add_stop_handler(lambda: None, "noop")
for i in range(int(sys.argv[1])):
    ks.emergency_stop(KillSwitchReason.MANUAL, scope=Scope(account=f"A{i}"))
lg.close()
shutil.rmtree(d)
PY
for n in 1 2 3; do
  valgrind --tool=callgrind --cache-sim=yes --collect-atstart=no \
    --toggle-collect='*KillSwitchCore::__pymethod_stop__*' \
    --callgrind-out-file="$out/cg.$n" "$PY" "$script" "$n" 2>"$out/log.$n" >/dev/null
  ir=$(grep -m1 "I   refs" "$out/log.$n" | awk '{print $NF}')
  i1=$(grep -m1 "I1  misses" "$out/log.$n" | awk '{print $NF}')
  d1=$(grep -m1 "D1  misses" "$out/log.$n" | awk '{print $4}')
  init=$(callgrind_annotate --inclusive=yes "$out/cg.$n" 2>/dev/null | grep -m1 "slot_tp_init" | awk '{print $1}')
  echo "stops=$n instructions=$ir (of which in KillSwitch.__init__'s warm-up: ${init:-0}) I1-misses=$i1 D1-misses=$d1"
done
