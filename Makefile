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

# Every benchmark in its --quick mode: a smoke run on tiny sizes through the same code path, one summary line
# each, NO results file written (benchmarks/results/ stays as measured); a few minutes in all. A figure worth
# keeping comes from a full run: the script without --quick (its docstring gives the command), which writes
# benchmarks/results/<name>.json with the machine description. Data under ../shared/data is read from beside
# the repository (or from $PERFSCALE_SHARED_DATA). Without a CUDA GPU, gpu_machine runs its CPU path and says
# what it did not exercise; without Slurm (array_vs_pilot), perf (collector_overhead) or Thicket
# (caliper_import: the bench extra) the line says what was left out, and the run goes on.
bench: setup
	.venv/bin/python benchmarks/planning.py --quick
	.venv/bin/python benchmarks/done_check.py --quick
	.venv/bin/python benchmarks/dispatch.py --quick
	.venv/bin/python benchmarks/scale.py --quick
	.venv/bin/python benchmarks/scale_synthetic.py --quick
	.venv/bin/python benchmarks/array_vs_pilot.py --quick
	.venv/bin/python benchmarks/collector_overhead.py --quick
	.venv/bin/python benchmarks/caliper_import.py --quick
	.venv/bin/python benchmarks/metrics_speed.py --quick
	.venv/bin/python benchmarks/generators.py --quick
	.venv/bin/python benchmarks/dissimilarity_study.py --quick
	.venv/bin/python benchmarks/relperf.py --quick
	.venv/bin/python benchmarks/endstate.py --quick
	.venv/bin/python benchmarks/inference.py --quick
	.venv/bin/python benchmarks/distributed.py --quick
	.venv/bin/python benchmarks/gpu_machine.py --quick
