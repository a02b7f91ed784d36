"""The console on a NATS plane in a real browser (headless Chromium, Selenium): a halter halts
by clicking, the env-joined trading process is blocked, the page shows the latch and the halt
from the plane's commands stream. The HTTP rules on NATS are in test_nats_console.py; the
browser helpers and the skip rules are test_browser.py's, loaded by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the console needs the [console] extra (starlette)")
pytest.importorskip("uvicorn", reason="the console needs the [console] extra (uvicorn)")
pytest.importorskip("selenium.webdriver", reason="selenium is not installed")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_here = Path(__file__).parent
_tb = _load(_here / "test_browser.py", "console_browser_helpers")
_tn = _load(_here / "test_nats_console.py", "console_nats_helpers")
By, EC = _tb.By, _tb.EC

# fixtures, found by pytest in this module's namespace
browser = _tb.browser
nats_url, nats_trader, nats_console = _tn.nats_url, _tn.nats_trader, _tn.nats_console

pytestmark = [*_tb.pytestmark, _tn.pytestmark]


def test_halt_by_click_on_a_nats_plane(nats_url, nats_trader, nats_console, browser, operators):
    t = nats_trader("t1")
    srv = nats_console()
    d = browser()
    _tb.login(d, srv.url, "carol", operators["carol"])
    _tb.wait_live(d)
    _tb.wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#procs tbody tr")) == 1)
    assert "No scope latched" in _tb.banner(d)
    d.find_element(By.CSS_SELECTOR, "#halt-level option[value='firm']").click()
    d.find_element(By.ID, "halt-reason").send_keys("runaway algo via nats")
    d.find_element(By.ID, "halt-button").click()
    d.find_element(By.ID, "halt-confirm-yes").click()
    _tb.wait(d, EC.text_to_be_present_in_element((By.ID, "banner"), "LATCHED: firm HALTED"))
    _tb.wait(d, EC.text_to_be_present_in_element((By.ID, "flash"), "applied by 1 process(es)"))
    assert t.allows() is False
    _tb.wait(d, EC.text_to_be_present_in_element((By.ID, "timeline"), "runaway algo via nats"))
    assert [e["scope"] for e in _tn.ControlPlane(nats_url).status().latched] == ["firm"]
