"""Suite-wide: timing tests (marker `latency`) run only when asked for (`make latency`,
`pytest -m latency`), never in the default run, where a loaded machine would make them flaky."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if "latency" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="timing test: run with `make latency` (pytest -m latency)")
    for item in items:
        if "latency" in item.keywords:
            item.add_marker(skip)
