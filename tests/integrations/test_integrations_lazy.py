"""The integrations package without the platforms (runs in the default suite): importing
killswitch_audit never imports a platform, a missing platform is a clear ImportError, and
the shared helpers behave."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from killswitch_audit.integrations import symbol_id_for


def test_importing_the_package_imports_no_platform():
    code = (
        "import sys, killswitch_audit, killswitch_audit.integrations\n"
        "bad = [m for m in ('nautilus_trader', 'freqtrade', 'ccxt') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "platform"), [("nautilus", "nautilus_trader"), ("freqtrade", "freqtrade")]
)
def test_a_missing_platform_is_a_clear_import_error(module, platform):
    if importlib.util.find_spec(platform) is not None:
        pytest.skip(f"{platform} is installed here")
    with pytest.raises(ImportError, match=rf"killswitch-audit\[{module}\]"):
        importlib.import_module(f"killswitch_audit.integrations.{module}")


def test_symbol_id_is_stable_nonzero_and_typed():
    assert symbol_id_for("AUD/USD.SIM") == symbol_id_for("AUD/USD.SIM")
    assert symbol_id_for("AUD/USD.SIM") != symbol_id_for("BTC/USDT")
    assert 0 < symbol_id_for("") <= 0xFFFF_FFFF
    # pinned: operators halt instruments by this number across hosts and releases
    assert symbol_id_for("BTC/USDT") == int.from_bytes(
        __import__("hashlib").blake2b(b"BTC/USDT", digest_size=4).digest(), "little"
    )
    with pytest.raises(TypeError, match="str"):
        symbol_id_for(7)  # type: ignore[arg-type]
