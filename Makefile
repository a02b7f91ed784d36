# One command per habit; .ci/run calls the same targets.
PY ?= python3

.PHONY: install test test-rust test-python test-integrations latency format lint bench miri demo

install:            ## build the release wheel and install it with the test extras
	$(PY) -m pip install -q ".[test]"

test: test-rust test-python   ## everything the README's test command runs

test-rust:
	cargo test --release -q

test-python:
	$(PY) -m pytest -q -p no:cacheprovider tests

# The platform integrations against the real NautilusTrader and freqtrade (pinned in
# tests/integrations/requirements.txt), in a venv of their own that sees this interpreter's
# packages (killswitch_audit as installed by `make install`, or PYTHONPATH=python).
INTEG_VENV ?= .venv-integrations
test-integrations:  ## the integration tests (creates $(INTEG_VENV) on first use)
	test -x $(INTEG_VENV)/bin/python || $(PY) -m venv --system-site-packages $(INTEG_VENV)
	$(INTEG_VENV)/bin/python -m pip install -q -r tests/integrations/requirements.txt
	$(INTEG_VENV)/bin/python -m pytest -q -p no:cacheprovider -rs tests/integrations

latency:            ## the latency suite alone
	$(PY) -m pytest -q -m latency tests

format:
	cargo fmt --all
	ruff format python tests benches examples

lint:
	cargo fmt --all -- --check
	$(PY) .ci/msrv.py
	cargo clippy --workspace --all-targets -- -D warnings
	ruff check python tests benches examples

bench:
	cargo bench -p killswitch-audit-core
	$(PY) -m killswitch_audit bench

miri:
	bash .ci/miri.sh

demo:
	$(PY) -m killswitch_audit demo
