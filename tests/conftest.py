"""Suite-wide: timing tests (marker `latency`) run only when asked for (`make latency`,
`pytest -m latency`), never in the default run, where a loaded machine would make them flaky;
and the fixtures several test files share (`logdir`, `logger`: a native logger in a temporary
directory, closed afterwards)."""

from __future__ import annotations

import pytest
from killswitch_audit import AuditLogger


def pytest_collection_modifyitems(config, items):
    if "latency" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="timing test: run with `make latency` (pytest -m latency)")
    for item in items:
        if "latency" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "audit"


@pytest.fixture
def logger(logdir):
    lg = AuditLogger(logdir)
    yield lg
    lg.close()
