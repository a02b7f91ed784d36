"""What a freqtrade backtest needs here without a network: a loopback HTTP server that
answers the one exchange call freqtrade makes at start (binance's `/api/v3/exchangeInfo`,
for `load_markets`; ccxt is pointed at it with `urls.api.public`), generated OHLCV data in a
datadir, and a bot config. freqtrade and ccxt themselves run unmodified."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAIR = "BTC/USDT"

EXCHANGE_INFO = {
    "timezone": "UTC",
    "serverTime": 1704067200000,
    "rateLimits": [],
    "exchangeFilters": [],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "baseAsset": "BTC",
            "baseAssetPrecision": 8,
            "quoteAsset": "USDT",
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": "0.01",
                    "maxPrice": "1000000.00",
                    "tickSize": "0.01",
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": "0.00001",
                    "maxQty": "9000.0",
                    "stepSize": "0.00001",
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": "5.0",
                    "applyMinToMarket": True,
                    "maxNotional": "9000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
        }
    ],
}


class _Handler(BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_GET(self):
        type(self).paths.append(self.path)
        if self.path.startswith("/api/v3/exchangeInfo"):
            body = json.dumps(EXCHANGE_INFO).encode()
            self.send_response(200)
        else:
            body = b'{"code": -1, "msg": "not served by the test exchange"}'
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class MarketsServer:
    """The loopback exchange (127.0.0.1, an ephemeral port); `close()` stops it."""

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v3"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def write_ohlcv(datadir: Path, n: int, start_ms: int = 1704067200000) -> None:
    """A market that falls 0.2% every 5 minutes with a 0.3% wick either side (json
    format: freqtrade's `dataformat_ohlcv: json`)."""
    d = datadir / "binance"
    d.mkdir(parents=True, exist_ok=True)
    rows, p = [], 40_000.0
    for k in range(n):
        c = p * 0.998
        rows.append([start_ms + k * 300_000, p, p * 1.003, c * 0.997, c, 10.0])
        p = c
    (d / "BTC_USDT-5m.json").write_text(json.dumps(rows))


def bot_config(tmp: Path, markets_url: str, audit_dir: Path, loss_limit_cents: int) -> Path:
    ccxt = {
        "options": {"fetchMarkets": {"types": ["spot"]}},
        "urls": {"api": {"public": markets_url}},
    }
    cfg = {
        "bot_name": "ftbot",
        "max_open_trades": 1,
        "stake_currency": "USDT",
        "stake_amount": 100,
        "dry_run": True,
        "dry_run_wallet": 10_000,
        "timeframe": "5m",
        "trading_mode": "spot",
        "dataformat_ohlcv": "json",
        "user_data_dir": str(tmp / "user_data"),
        "exchange": {
            "name": "binance",
            "key": "",
            "secret": "",
            "pair_whitelist": [PAIR],
            "ccxt_config": ccxt,
            "ccxt_async_config": ccxt,
        },
        "pairlists": [{"method": "StaticPairList"}],
        "entry_pricing": {"price_side": "same", "use_order_book": False},
        "exit_pricing": {"price_side": "same", "use_order_book": False},
        "killswitch_audit": {
            "log_dir": str(audit_dir),
            "settings": {"kill_switch": {"triggers": {"daily_loss_limit_cents": loss_limit_cents}}},
        },
    }
    (tmp / "user_data").mkdir(exist_ok=True)
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


STRATEGY = '''
from freqtrade.strategy import IStrategy
from killswitch_audit.integrations.freqtrade import KillSwitchMixin


class KsLoser(KillSwitchMixin, IStrategy):
    """Enters long on every candle of a falling market; a 1% stop-loss closes each trade."""

    INTERFACE_VERSION = 3
    timeframe = "5m"
    minimal_roi = {"0": 10.0}
    stoploss = -0.01
    startup_candle_count = 0

    def populate_indicators(self, dataframe, metadata):
        return dataframe

    def populate_entry_trend(self, dataframe, metadata):
        dataframe["enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe, metadata):
        dataframe["exit_long"] = 0
        return dataframe

    def confirm_trade_entry(self, pair, order_type, amount, rate, time_in_force, current_time,
                            entry_tag, side, **kwargs):
        # a strategy's own hook that never calls super(): the kill switch must gate it anyway
        self.own_confirms = getattr(self, "own_confirms", 0) + 1
        return True

    def order_filled(self, pair, trade, order, current_time, **kwargs):
        self.own_fills = getattr(self, "own_fills", 0) + 1
'''


def write_strategy(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ks_loser.py").write_text(STRATEGY)
