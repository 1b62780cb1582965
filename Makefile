# difforge: `make demo` trains and judges the embedded default; `make test` runs every test.
# Both create the shared torch 2.11.0 environment first if it is missing (tools/setup_venv.sh).
SHELL := /bin/bash
CARGO_ENV := source ./env.sh &&

.PHONY: setup build demo demo-t2i demo-finetune test lint clean

setup:
	bash tools/setup_venv.sh

build: setup
	$(CARGO_ENV) cargo build --release

demo: build
	bash tools/demo.sh

demo-t2i: build
	bash tools/demo_t2i.sh

demo-finetune: build
	bash tools/demo_finetune.sh

test: setup
	$(CARGO_ENV) cargo test --workspace --no-fail-fast

lint: setup
	cargo fmt --all --check
	$(CARGO_ENV) cargo clippy --workspace --all-targets -- -D warnings

clean:
	cargo clean
