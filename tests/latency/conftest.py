"""Fixtures of the latency suite (helpers in `_timing.py`)."""

from __future__ import annotations

import pytest

pytest.importorskip("killswitch_audit._native", reason="native extension not built")

from killswitch_audit.bench import timer_overhead


@pytest.fixture(scope="session")
def overhead() -> int:
    """Median cost of the two timer reads around a call (ns)."""
    return timer_overhead(100_000)


@pytest.fixture
def logdir(tmp_path):
    d = tmp_path / "audit"
    yield d
