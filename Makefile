.PHONY: setup demo test lint bench

setup:
	./scripts/setup.sh

# the main job: workflows/perfgen.yaml on the embedded default site; prints where its report is
demo: setup
	.venv/bin/perfscale run workflows/perfgen.yaml --site local

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check perfscale tests benchmarks

# quick modes: smoke runs that write no results (run a benchmark without --quick to record its figures)
bench: setup
	.venv/bin/python benchmarks/dispatch.py --quick
	.venv/bin/python benchmarks/scale.py --quick
