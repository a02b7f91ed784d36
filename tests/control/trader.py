"""A trading process for the control-plane tests: a KillSwitch joined to a control directory.

    python trader.py LOG_DIR CONTROL_DIR NAME [CONFIG_JSON]

Prints one JSON line when ready (with the answer of its very first `allows()`), then answers
each stdin line `SCOPE_TEXT` with `{"scope": ..., "allows": bool, "reduce": bool}` (allows
for an order that reduces the position). `EXIT` closes cleanly.
"""

import json
import os
import sys

from killswitch_audit import AuditConfig, AuditLogger, KillSwitch, Scope
from killswitch_audit.control import join


def main() -> None:
    log_dir, control_dir, name = sys.argv[1:4]
    cfg = AuditConfig.from_dict(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
    logger = AuditLogger(log_dir, segment_size_mb=1, emergency_buffer_size=1024)
    ks = KillSwitch(logger, latency_monitor=False, config=cfg, check_clock=False, warm_up=False)
    membership = join(ks, cfg, location=control_dir, name=name)
    first = ks.allows(None)  # the first answer of this process's gate
    print(json.dumps({"ready": True, "pid": os.getpid(), "first_allows": first}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if line == "EXIT":
            break
        scope = Scope.parse(line)
        print(
            json.dumps(
                {
                    "scope": line,
                    "allows": ks.allows(scope),
                    "reduce": ks.allows(scope, reduces_position=True),
                    "lost": membership.control_lost,
                }
            ),
            flush=True,
        )
    membership.close()
    logger.close()


if __name__ == "__main__":
    main()
