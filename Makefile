# Datapunk — the two commands are `make run` and `make test`; the rest are parts of them.
.PHONY: run up down status test gen check lint typecheck unit integration contract bench env engines tools

run: env engines            ## install what is missing, then run the whole platform (foreground)
	.venv/bin/datapunk up

up: env engines             ## the same, in the background
	.venv/bin/datapunk up --detach

down:
	.venv/bin/datapunk down

status:
	.venv/bin/datapunk status

test:                       ## every check and test; what CI runs
	scripts/test.sh

gen: env                    ## regenerate gen/ from proto/, then the Envoy configs from gen/
	scripts/gen.sh
	scripts/gen-envoy.sh

check: env                  ## buf lint/format/breaking and the generated-code drift check
	scripts/check-contracts.sh

lint: env
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: env
	.venv/bin/mypy

bench: env engines tools    ## benchmarks (not tests): prints tables, writes bench/results/*.json
	.venv/bin/python -m bench.run

env:
	scripts/python-env.sh

engines:
	scripts/install-engines.sh

tools:
	scripts/install-tools.sh
