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

bench: setup
	.venv/bin/python benchmarks/dispatch.py
