# One command per habit; .ci/run calls the same targets.
PY ?= python3

.PHONY: install test test-rust test-python latency format lint bench miri demo

install:            ## build the release wheel and install it with the test extras
	$(PY) -m pip install -q ".[test]"

test: test-rust test-python   ## everything the README's test command runs

test-rust:
	cargo test --release -q

test-python:
	$(PY) -m pytest -q -p no:cacheprovider tests

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
