"""perfscale as a library: optional extras and their named errors, the Campaign API (from Python and from a
Parsl app) and `--set` overrides.

A missing extra is simulated the way Python itself refuses a module: `sys.modules[name] = None` (the import
then raises ModuleNotFoundError), set in a fresh interpreter so this process keeps its modules.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

from perfscale.errors import BadInput, FailureKind
from perfscale.extras import MissingExtra, require
from tests.studies import NOOP

ROOT = Path(__file__).resolve().parents[1]
# every module an extra brings (and the ones it pulls in that perfscale imports itself)
OPTIONAL = [
    *("parsl", "distributed", "dask", "dask_jobqueue", "ray"),
    *("sdv", "torch", "safetensors", "xgboost", "umap"),
    *("transformers", "tokenizers", "gguf", "accelerate", "deepspeed", "mpi4py"),
]


def python_without(modules: list[str], code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (this checkout on its path) in which `modules` cannot be imported."""
    prelude = f"import sys\nfor _m in {modules!r}:\n    sys.modules[_m] = None\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_require_returns_the_module_or_names_the_extra() -> None:
    assert require("profile", "json").dumps([1]) == "[1]"
    with pytest.raises(MissingExtra) as info:
        require("synth", "perfscale_no_such_module", "the test generator")
    exc = info.value
    assert str(exc) == (
        "the test generator needs perfscale[synth] (module perfscale_no_such_module is not installed): "
        "pip install 'perfscale[synth]'"
    )
    assert isinstance(exc, ImportError) and isinstance(exc, BadInput)
    assert exc.kind is FailureKind.BAD_INPUT  # a task fails with it once: a retry cannot install a package
    again = pickle.loads(pickle.dumps(exc))  # engines send exceptions back from their workers
    assert (type(again), str(again), again.extra, again.name) == (MissingExtra, str(exc), "synth", exc.name)
    with pytest.raises(ValueError, match="unknown extra 'gpu'"):
        require("gpu", "json")


def test_a_broken_install_is_not_reported_as_a_missing_extra(tmp_path: Path) -> None:
    """An ImportError other than a missing module (a broken install) is shown as it is."""
    (tmp_path / "perfscale_broken_mod.py").write_text("from json import no_such_name\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ImportError) as info:
            require("synth", "perfscale_broken_mod")
        assert not isinstance(info.value, MissingExtra)
        assert "no_such_name" in str(info.value)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("perfscale_broken_mod", None)


def _require_calls() -> list[tuple[str, str, str]]:
    """(file, extra, module) of every `require("extra", "module"...)` in the package, and of the engines."""
    from perfscale.engines.base import ENGINE_MODULES

    calls = [("perfscale/engines/base.py", "engines", m) for m in ENGINE_MODULES.values()]
    for path in sorted((ROOT / "perfscale").rglob("*.py")):
        for extra, module in re.findall(r'require\(\s*"(\w+)",\s*"([\w.]+)"', path.read_text()):
            calls.append((str(path.relative_to(ROOT)), extra, module))
    return calls


def test_every_require_names_an_extra_that_declares_the_module() -> None:
    """The extra a MissingExtra tells the user to install does bring the missing module."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared = {
        name: {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}
        for name, requirements in extras.items()
    }
    dists = importlib.metadata.packages_distributions()
    calls = _require_calls()
    assert {m.split(".")[0] for _, _, m in calls} >= {"parsl", "distributed", "sdv", "torch", "transformers"}
    for where, extra, module in calls:
        names = {d.lower() for d in dists.get(module.split(".")[0], [])}
        assert names & declared[extra], f"{where}: {module} ({names}) is not in perfscale[{extra}]"
    everything = set().union(*(declared[e] for e in ("engines", "synth", "llm", "mpi")))
    assert {"threadpoolctl", "caliper-reader"}.isdisjoint(everything)  # core, not optional
    assert extras["all"] == ["perfscale[engines,synth,llm,mpi]"]


def test_the_core_runs_a_study_and_its_report_without_any_extra(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(NOOP)
    code = f"""
    from perfscale.cli import main
    rc = main(["run", "tiny.yaml", "--engine", "local", "--workers", "1", "--run-dir", "run", "--quiet"])
    loaded = [m for m in {OPTIONAL!r} if sys.modules.get(m) is not None]
    print("rc", rc, "loaded", loaded)
    """
    done = python_without(OPTIONAL, code, tmp_path)
    assert "rc 0 loaded []" in done.stdout, done.stdout + done.stderr
    assert len(list((tmp_path / "run" / "stages" / "touch").glob("*.parquet"))) == 3
    assert (tmp_path / "run" / "report" / "index.html").is_file()


def test_a_missing_engine_extra_is_a_one_line_cli_error(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(NOOP)
    code = """
    from perfscale.cli import main
    sys.exit(main(["run", "tiny.yaml", "--engine", "parsl", "--run-dir", "run", "--quiet"]))
    """
    done = python_without(["parsl"], code, tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "perfscale: error: the parsl engine needs perfscale[engines] (module parsl is not installed): "
        "pip install 'perfscale[engines]' (or use --engine local)"
    )


@pytest.mark.parametrize(
    ("blocked", "generator", "extra"),
    [
        ("sdv", "gaussian_copula", "synth"),
        ("torch", "tabddpm", "synth"),
        ("transformers", "great", "llm"),
    ],
)
def test_a_missing_generator_extra_names_the_pip_command(
    tmp_path: Path, blocked: str, generator: str, extra: str
) -> None:
    code = f"""
    import pandas as pd
    from perfscale.extras import MissingExtra
    from perfscale.generators import get_generator
    from perfscale.tabular.meta import infer_meta
    table = pd.DataFrame({{"a": [1.0, 2.0, 3.0, 4.0], "b": ["x", "y", "x", "y"]}})
    try:
        get_generator({generator!r})().fit(table, infer_meta(table), seed=1)
    except MissingExtra as exc:
        print("MissingExtra:", exc)
    """
    done = python_without([blocked], code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"MissingExtra: the {generator} generator needs perfscale[{extra}] (module {blocked} is not "
        f"installed): pip install 'perfscale[{extra}]'"
    )


# ---- --set overrides ---------------------------------------------------------------------------------------

DATASETS = """\
name: datasets
stages:
  data:
    kind: ingest
    params: {kind: csv, source: small.csv}
  sq: &square
    kind: function
    params: {callable: "fns.py:square", x: 2}
  copy: *square
"""


def _main_err(capsys, argv: list[str]) -> str:
    from perfscale.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("perfscale: error: --set "), err
    return err


def test_one_study_file_serves_two_data_sets(write_study, study_dir: Path, capsys) -> None:
    from perfscale.cli import main
    from perfscale.plan import build_plan
    from perfscale.spec import load_site, load_study
    from perfscale.store import RunStore

    study = write_study(DATASETS)
    (study_dir / "small.csv").write_text("a,b\n1,x\n2,y\n")
    (study_dir / "large.csv").write_text("a,b\n" + "".join(f"{i},z\n" for i in range(7)))
    base = ["run", str(study), "--engine", "local", "--workers", "1", "--quiet", "--no-report"]
    assert main([*base, "--run-dir", str(study_dir / "small")]) == 0
    sets = ["--set", "stages.data.params.source=large.csv", "--set", "stages.sq.params.x=5"]
    assert main([*base, "--run-dir", str(study_dir / "large"), *sets]) == 0
    small, large = RunStore(study_dir / "small"), RunStore(study_dir / "large")
    assert (small.read_stage("data").num_rows, large.read_stage("data").num_rows) == (2, 7)
    assert large.read_stage("sq").column("y").to_pylist() == [25]
    assert large.read_stage("copy").column("y").to_pylist() == [4]  # the stage aliasing sq keeps its x
    # the unchanged study is recorded as written; the overridden one as a study that replans the same
    assert (small.root / "study.yaml").read_text() == DATASETS
    recorded = (large.root / "study.yaml").read_text()
    assert recorded.splitlines()[0] == (
        f"# {study} with --set stages.data.params.source=large.csv --set stages.sq.params.x=5"
    )
    replanned = build_plan(load_study(large.root / "study.yaml"), "", load_site("local"))
    assert [t.key for t in replanned.tasks] == [t.key for t in large.plan.tasks]
    assert [t.key for t in large.plan.tasks] != [t.key for t in small.plan.tasks]


def test_set_values_are_yaml_scalars(write_study) -> None:
    from perfscale.plan.overrides import load_study_text

    study = write_study(DATASETS)
    sets = {
        "x": "5",
        "f": "0.5",
        "flag": "true",
        "items": "[1, two]",
        "text": "'5'",
        "none": "",
        "d": "{k: 1}",
    }
    loaded, _ = load_study_text(study, [f"stages.sq.params.{k}={v}" for k, v in sets.items()])
    params = loaded.stages["sq"].params
    assert params == {
        "callable": "fns.py:square",
        "x": 5,
        "f": 0.5,
        "flag": True,
        "items": [1, "two"],
        "text": "5",
        "none": "",
        "d": {"k": 1},
    }
    nested, _ = load_study_text(study, ["stages.sq.params.d.k=2", "stages.sq.params.d.j=3"])
    assert nested.stages["sq"].params["d"] == {"k": 2, "j": 3}


def test_a_bad_set_is_a_one_line_error_naming_the_flag_and_the_choices(write_study, capsys) -> None:
    study = str(
        write_study(DATASETS + "  s:\n    kind: split\n    inputs: [data]\n    params: {source: data}\n")
    )
    plan = ["plan", study, "--out", str(Path(study).with_suffix(".parquet"))]
    err = _main_err(capsys, [*plan, "--set", "stages.nope.params.x=1"])
    assert err.endswith(
        "'stages.nope.params.x=1': " + f"{study} has no stage 'nope'; its stages: data, sq, copy, s"
    )
    err = _main_err(capsys, [*plan, "--set", "stages.s.params.holdout=0.5"])
    assert err.endswith(
        "stage 's' (kind split) has no parameter 'holdout'; its parameters: columns, holdout_fraction, "
        "rows, source"
    )
    for flag in ("stages.s.resources.cores=2", "stages.s.params.", "stages.s.params.x", "name=other"):
        err = _main_err(capsys, [*plan, "--set", flag])
        assert err.endswith(
            f"--set {flag!r}: give stages.NAME.params.KEY=VALUE (only stage parameters can be set)"
        )
    err = _main_err(capsys, ["run", study, "--set", "stages.sq.params.x=[1"])
    assert "VALUE is not a YAML value" in err
    grid = write_study(
        "name: g\nstages:\n  n:\n    kind: noop\n    grid:\n      product: {y: [1, 2]}\n", "g.yaml"
    )
    err = _main_err(capsys, ["plan", str(grid), "--set", "stages.n.params.y=3"])
    assert "'y' is a grid parameter of stage 'n' (grid.product)" in err


# ---- the Campaign API --------------------------------------------------------------------------------------

EXAMPLES = ROOT / "examples" / "embedding"


def test_campaign_plans_runs_reads_and_renders_from_python(write_study, tmp_path: Path) -> None:
    import perfscale
    from perfscale.campaign import Campaign
    from perfscale.errors import PerfscaleError, SpecError
    from tests.studies import STUDY

    assert perfscale.Campaign is Campaign
    study, run = write_study(STUDY), tmp_path / "run"
    c = Campaign(study, run_dir=run)
    assert [t.stage for t in c.plan().tasks] == ["square"] * 5 + ["total"]
    assert not run.exists()  # planning writes nothing
    with pytest.raises(PerfscaleError, match="is not a perfscale run"):
        c.status()
    summary = c.run(engine="local", workers=1)
    assert {s: (x.total, x.done, x.ran, x.failed) for s, x in summary.items()} == {
        "square": (5, 5, 5, 0),
        "total": (1, 1, 1, 0),
    }
    assert [(s.stage, s.done, s.failed, s.missing) for s in c.status()] == [
        ("square", 5, 0, 0),
        ("total", 1, 0, 0),
    ]
    table = c.read("total")
    assert table.to_pylist() == [{"n": 5, "sum_y": 55}]
    assert "_task_key" in c.read("total", provenance=True).column_names
    assert c.run(engine="local", workers=1)["square"].ran == 0  # nothing left to run
    with pytest.raises(PerfscaleError, match="has no stage 'nope'; stages: square, total"):
        c.read("nope")
    rendered = Campaign(study, site="quartz", run_dir=tmp_path / "q").submit(dry_run=True)
    assert [job.stage for job, _ in rendered] == ["square", "total"]
    assert all(script.is_file() and script.parent == tmp_path / "q" / "arrays" for _, script in rendered)
    with pytest.raises(SpecError, match="has no stage 'sq'"):
        Campaign(study, overrides=["stages.sq.params.x=1"])
    sets = ["stages.total.params.note=x"]
    assert repr(Campaign(study, run_dir=run, overrides=sets)) == (
        f"Campaign({str(study)!r}, site='local', run_dir={str(run)!r}, overrides={sets!r})"
    )


def test_import_perfscale_does_not_load_the_campaign(tmp_path: Path) -> None:
    code = "import perfscale; print(sorted(m for m in sys.modules if m.startswith('perfscale')))"
    done = python_without([], code, tmp_path)
    assert done.stdout.strip() == "['perfscale', 'perfscale.version']", done.stderr


def test_a_campaign_runs_inside_parsl_apps(tmp_path: Path) -> None:
    """examples/embedding/parsl_step.py: one Parsl app per data set runs a Campaign, a summary app reads
    every run's `split` stage as Arrow."""
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "parsl_step.py"), "--executor", "threads", "--out", str(out)],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.strip().splitlines()]
    assert rows == [
        ["dataset", "split", "rows"],
        ["large", "holdout", "6"],
        ["large", "train", "18"],
        ["small", "holdout", "2"],
        ["small", "train", "6"],
    ]
    for name in ("small", "large"):
        assert (
            "--set stages.data.params.source=data/" + name + ".csv" in (out / name / "study.yaml").read_text()
        )
        assert "local engine: stopped" in (out / name / "perfscale.log").read_text()


def _perfscale_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose `perfscale` command is this checkout's CLI."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "perfscale"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m perfscale.cli "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _bash(script: str, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-ec", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"


def _split_rows(path: Path) -> dict[str, int]:
    import pandas as pd

    return pd.read_csv(path)["split"].value_counts().to_dict()


def test_the_snakemake_rule_runs_its_campaign(tmp_path: Path) -> None:
    """The `campaign` rule's shell command, its placeholders filled in as Snakemake would (Snakemake itself
    is not installed here)."""
    text = (EXAMPLES / "Snakefile").read_text()
    block = text.split("rule campaign:")[1].split("shell:")[1].split("\n\n")[0]
    command = "".join(re.findall(r'"([^"]*)"', block))
    work = tmp_path / "embedding"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    filled = {
        "{input.study}": "study.yaml",
        "{input.data}": "data/large.csv",
        "{wildcards.dataset}": "large",
        "{output}": "runs/large/split.csv",
    }
    for placeholder, value in filled.items():
        command = command.replace(placeholder, value)
    assert "{" not in command, command
    _bash(command, work, _perfscale_on_path(tmp_path))
    assert _split_rows(work / "runs" / "large" / "split.csv") == {"train": 18, "holdout": 6}


def test_the_maestro_step_runs_its_campaign(tmp_path: Path) -> None:
    """The `campaign` step's command of maestro.yaml, with Maestro's tokens filled in (Maestro itself is not
    installed here)."""
    import yaml

    spec = yaml.safe_load((EXAMPLES / "maestro.yaml").read_text())
    step = next(s for s in spec["study"] if s["name"] == "campaign")
    assert spec["global.parameters"]["DATASET"]["values"] == ["small", "large"]
    summary = next(s for s in spec["study"] if s["name"] == "summary")
    assert summary["run"]["depends"] == ["campaign_*"]
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    tokens = {"$(SPECROOT)": str(EXAMPLES), "$(WORKSPACE)": str(workspace), "$(DATASET)": "small"}
    command = step["run"]["cmd"]
    for token, value in tokens.items():
        command = command.replace(token, value)
    assert "$(" not in command, command
    _bash(command, tmp_path, _perfscale_on_path(tmp_path))
    assert _split_rows(workspace / "split.csv") == {"train": 6, "holdout": 2}
