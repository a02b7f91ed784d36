"""The console in a real browser: headless Chromium driven by Selenium (Debian's `chromium`
and `chromium-driver`). Log in, halt by clicking (with the confirmation step) and check that
real trading processes are blocked, the four-eyes reset in two browser sessions with two
operators, and the refusals as the page shows them.

Screenshots for docs/CONSOLE.md are written only when KSA_SCREENSHOTS names a directory
(`KSA_SCREENSHOTS=docs/console pytest tests/console/test_browser.py`): a normal run never
rewrites committed files."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the console needs the [console] extra (starlette)")
pytest.importorskip("uvicorn", reason="the console needs the [console] extra (uvicorn)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from killswitch_audit.control import ControlPlane  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless Chromium tests need Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver): "
        f"chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}",
    ),
]

SHOTS = os.environ.get("KSA_SCREENSHOTS")
WAIT_S = 30


def shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    started = []

    def start():
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in (
            "--headless=new",
            "--no-sandbox",  # root in a container
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1400,1000",
            "--no-first-run",
            "--password-store=basic",
        ):
            opts.add_argument(a)
        d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        d.set_page_load_timeout(WAIT_S)
        started.append(d)
        return d

    yield start
    for d in started:
        d.quit()


def wait(driver, cond, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond)


def click_live(driver, element_id: str) -> None:
    """Clicks an element of a live-rendered part of the page (the pending list): a server push
    may replace it between finding and clicking, so find it again until the click lands."""

    def attempt(d):
        try:
            d.find_element(By.ID, element_id).click()
            return True
        except StaleElementReferenceException:
            return False

    wait(driver, attempt)


def login(driver, base: str, name: str, password: str) -> None:
    driver.get(base + "/login")
    driver.find_element(By.ID, "operator").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()


def wait_live(driver) -> None:
    wait(driver, EC.text_to_be_present_in_element((By.ID, "live"), "live"))


def banner(driver) -> str:
    return driver.find_element(By.ID, "banner").text


def test_login_halt_by_click_and_four_eyes_reset(
    console_server, browser, traders, control, operators
):
    ts = [traders("alpha"), traders("beta")]
    srv = console_server()
    a = browser()

    # wrong password: refused, shown next to the form, no session
    login(a, srv.url, "alice", "not-her-password")
    wait(a, EC.text_to_be_present_in_element((By.ID, "login-error"), "wrong operator"))
    shot(a, "login-refused")
    login(a, srv.url, "alice", operators["alice"])
    wait_live(a)
    wait(a, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#procs tbody tr")) == 2)
    assert "No scope latched" in banner(a)
    shot(a, "overview")

    # a bad scope: the server's message next to the field, nothing applied
    a.find_element(By.CSS_SELECTOR, "#halt-level option[value='custom']").click()
    a.find_element(By.ID, "halt-value").send_keys("acct=A1")
    a.find_element(By.ID, "halt-reason").send_keys("testing a bad scope")
    a.find_element(By.ID, "halt-button").click()
    a.find_element(By.ID, "halt-confirm-yes").click()
    wait(a, EC.text_to_be_present_in_element((By.ID, "halt-scope-error"), "malformed scope"))
    shot(a, "bad-scope")
    assert all(t.allows() for t in ts)

    # halt the firm by clicking, with the confirmation step
    a.find_element(By.CSS_SELECTOR, "#halt-level option[value='firm']").click()
    reason = a.find_element(By.ID, "halt-reason")
    reason.clear()
    reason.send_keys("runaway algo on alpha <b id=injected>x</b>")
    a.find_element(By.ID, "halt-button").click()
    confirm = a.find_element(By.ID, "halt-confirm")
    assert confirm.is_displayed()
    assert (
        'HALT scope "firm" on 2 live process(es)' in a.find_element(By.ID, "halt-confirm-text").text
    )
    shot(a, "halt-confirm")
    a.find_element(By.ID, "halt-confirm-yes").click()
    wait(a, EC.text_to_be_present_in_element((By.ID, "banner"), "LATCHED: firm HALTED"))
    wait(a, EC.text_to_be_present_in_element((By.ID, "flash"), "applied by 2 process(es)"))
    # the real trading processes are blocked
    assert [t.allows() for t in ts] == [False, False]
    assert [t.allows("account=X;venue=Y") for t in ts] == [False, False]
    wait(a, EC.text_to_be_present_in_element((By.ID, "latency-pct"), "2 gate closures"))
    wait(a, EC.text_to_be_present_in_element((By.ID, "timeline"), "runaway algo on alpha"))
    # operator text is shown as text, never parsed as HTML
    assert "<b id=injected>x</b>" in a.find_element(By.ID, "timeline").text
    assert a.find_elements(By.ID, "injected") == []
    shot(a, "halted")

    # four eyes: alice requests, alice may not approve, bob (another browser) approves
    a.find_element(By.ID, "reset-reason").send_keys("root cause fixed")
    a.find_element(By.ID, "reset-request").click()
    wait(a, lambda d: d.find_elements(By.ID, "approve-1"))
    click_live(a, "approve-1")
    wait(a, EC.text_to_be_present_in_element((By.ID, "flash"), "four eyes"))
    shot(a, "same-operator-refused")
    assert [t.allows() for t in ts] == [False, False]

    b = browser()
    login(b, srv.url, "bob", operators["bob"])
    wait_live(b)
    wait(b, lambda d: d.find_elements(By.ID, "approve-1"))
    wait(b, EC.text_to_be_present_in_element((By.ID, "pending-1"), "alice"))
    shot(b, "pending-reset")
    click_live(b, "approve-1")
    wait(b, EC.text_to_be_present_in_element((By.ID, "flash"), "approved and issued"))
    # both pages are updated live
    for d in (a, b):
        wait(d, EC.text_to_be_present_in_element((By.ID, "banner"), "No scope latched"))
        wait(d, EC.text_to_be_present_in_element((By.ID, "pending-1"), "approved by bob"))
    assert [t.allows() for t in ts] == [True, True]
    shot(b, "after-reset")
    ev = ControlPlane(control).events()
    assert [(e["kind"], e["operator"], e["second_operator"]) for e in ev] == [
        ("halt", "alice", ""),
        ("reset", "alice", "bob"),
    ]


def test_viewer_page_refusals(console_server, browser, traders, control, operators):
    t = traders("gamma")
    srv = console_server()
    v = browser()
    login(v, srv.url, "victor", operators["victor"])
    wait_live(v)
    assert v.find_element(By.ID, "halt-button").get_attribute("disabled") is not None
    assert "may not halt" in v.find_element(By.ID, "halt-role-note").text
    shot(v, "viewer")
    # the page only helps: re-enable the button by hand, the server still refuses
    v.execute_script("document.getElementById('halt-button').disabled = false")
    v.find_element(By.ID, "halt-reason").send_keys("a viewer trying")
    v.find_element(By.ID, "halt-button").click()
    v.find_element(By.ID, "halt-confirm-yes").click()
    wait(v, EC.text_to_be_present_in_element((By.ID, "flash"), "may not do this"))
    time.sleep(0.2)
    assert t.allows() is True
    assert ControlPlane(control).status().latched == []
    # a page whose CSRF token is wrong is refused as well
    v.execute_script("me.csrf = 'forged'; document.getElementById('halt-button').disabled = false")
    v.find_element(By.ID, "halt-button").click()
    v.find_element(By.ID, "halt-confirm-yes").click()
    wait(v, EC.text_to_be_present_in_element((By.ID, "flash"), "CSRF"))
    assert t.allows() is True
