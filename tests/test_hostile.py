"""Hostile study and site files: each is refused with one line naming the file, the field and the fix.

The CLI cases run `perfscale` as a real subprocess (with a memory cap where the old behaviour was to blow up),
the others go through the real loader and planner.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from perfscale.errors import SpecError
from perfscale.plan import build_plan
from perfscale.spec import Site, Study, load_study

ROOT = Path(__file__).resolve().parents[1]
MEMORY_CAP = 3 * 2**30  # address space of a CLI subprocess: a runaway expansion dies instead of the machine

NOOP_STAGES = """\
stages:
  s:
    kind: noop
"""


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def perfscale(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`perfscale ARGS` from this checkout, in a subprocess with capped memory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "perfscale.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_cap_memory,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit status 2, no traceback, and a `perfscale: error:` message holding every fragment."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.startswith("perfscale: error: "), done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)
    return done.stderr


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["name: bomb", f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n" + NOOP_STAGES


# ---- YAML itself -----------------------------------------------------------------------------------------
def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path):
    study = tmp_path / "bomb.yaml"
    study.write_text(alias_bomb())
    done = perfscale("plan", study, "--out", tmp_path / "p.parquet", cwd=tmp_path, timeout=60)
    err = assert_one_line_error(done, "bomb.yaml:10: a8:", "aliases expand to", "limit of 100,000")
    assert "write the values out" in err
    assert not (tmp_path / "p.parquet").exists()


def test_aliases_within_the_limit_still_load(write_study):
    text = "name: shared\nstages:\n  a: &stage\n    kind: noop\n  b: *stage\n  c:\n    <<: *stage\n"
    study = load_study(write_study(text))
    assert [s.kind for s in study.stages.values()] == ["noop"] * 3


def test_a_recursive_alias_is_refused(write_study):
    with pytest.raises(SpecError, match=r"study.yaml:2: an alias refers to the node that contains it"):
        load_study(write_study("name: loop\nx: &x [1, *x]\n" + NOOP_STAGES))


def test_too_deep_nesting_is_refused(write_study):
    deep = "[" * 3000 + "]" * 3000
    with pytest.raises(SpecError, match=r"study.yaml: the YAML is nested too deeply"):
        load_study(write_study(f"name: deep\nx: {deep}\n" + NOOP_STAGES))


def test_a_stage_named_twice_is_an_error_naming_both_lines(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: twice\nstages:\n  s:\n    kind: profile\n    params: {command: 'true'}\n  s:\n    kind: noop\n"
    )
    done = perfscale("plan", study, "--out", tmp_path / "p.parquet", cwd=tmp_path)
    assert_one_line_error(done, "study.yaml:6: stages.s: given twice (lines 3 and 6); keep one")


def test_every_duplicate_field_is_named(write_study):
    text = "name: twice\nseed: 1\nseed: 2\nstages:\n  s: {kind: noop, kind: profile}\n"
    with pytest.raises(SpecError) as info:
        load_study(write_study(text))
    msg = str(info.value)
    assert "2 duplicate keys" in msg
    assert "study.yaml:3: seed: given twice (lines 2 and 3)" in msg
    assert "study.yaml:5: stages.s.kind: given twice (lines 5 and 5)" in msg


# ---- names -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "..", "a b", "x" * 101])
def test_stage_names_that_are_not_one_safe_folder_name_are_refused(tmp_path, name):
    study = tmp_path / "study.yaml"
    study.write_text(f'name: esc\nstages:\n  ok:\n    kind: noop\n  "{name}":\n    kind: noop\n')
    run = tmp_path / "deep" / "run"
    done = perfscale("run", study, "--run-dir", run, "--engine", "local", "--no-report", cwd=tmp_path)
    assert_one_line_error(done, f"study.yaml:5: stages.{name}", "rename it")
    assert list(tmp_path.rglob("*.parquet")) == [] and not run.exists()


def test_a_site_name_that_leaves_runs_is_refused(tmp_path):
    (tmp_path / "evil.yaml").write_text('name: "x/../../.."\n')
    (tmp_path / "study.yaml").write_text("name: s\n" + NOOP_STAGES)
    done = perfscale("run", "study.yaml", "--site", "evil.yaml", "--engine", "local", cwd=tmp_path)
    assert_one_line_error(done, "evil.yaml:1: name: names may hold only letters", "rename it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yaml", "study.yaml"]


@pytest.mark.parametrize("name", ["a.b", "x-1_2", "...", ".hidden"])
def test_safe_names_still_load(write_study, name):
    study = load_study(write_study(f'name: "{name}"\nstages:\n  "{name}":\n    kind: noop\n'))
    assert list(study.stages) == [name]


# ---- run folders -----------------------------------------------------------------------------------------
def _run(study: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return perfscale(
        "run", study, "--run-dir", run_dir, "--engine", "local", "--no-report", "--quiet", cwd=study.parent
    )


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("name: s\n" + NOOP_STAGES)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "study.yaml").write_text("my own file\n")
    assert_one_line_error(_run(study, folder), f"run folder {folder} is not empty and is not a perfscale run")
    assert [p.name for p in folder.iterdir()] == ["study.yaml"]
    assert (folder / "study.yaml").read_text() == "my own file\n"


def test_a_run_of_another_study_is_refused_and_the_same_study_reruns(tmp_path):
    first, other = tmp_path / "first.yaml", tmp_path / "other.yaml"
    first.write_text("name: first\n" + NOOP_STAGES)
    other.write_text("name: other\n" + NOOP_STAGES)
    run = tmp_path / "run"
    run.mkdir()  # an empty folder is fine
    assert _run(first, run).returncode == 0
    manifest = (run / "manifest.json").read_text()
    assert_one_line_error(_run(other, run), f"run folder {run} holds a run of study 'first', not 'other'")
    assert (run / "manifest.json").read_text() == manifest
    assert (run / "study.yaml").read_text() == first.read_text()
    assert _run(first, run).returncode == 0  # the same study reopens its run


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("name: s\n" + NOOP_STAGES)
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(_run(study, tmp_path / "afile"), f"run folder {tmp_path / 'afile'} is a file")


# ---- site files ------------------------------------------------------------------------------------------
def test_site_env_names_with_shell_text_are_refused(tmp_path):
    (tmp_path / "evil.yaml").write_text('name: evil\nenv:\n  "X=1; touch pwned #": "v"\n')
    done = perfscale("sites", "show", "evil.yaml", cwd=tmp_path)
    assert_one_line_error(done, "evil.yaml:3: env.X=1; touch pwned #", "not an environment variable name")
    assert not (tmp_path / "pwned").exists()


def test_every_shell_rendering_of_site_env_exports_the_exact_value(tmp_path):
    """Parsl's worker_init, Dask's job prologue and the array job scripts, run by a real bash."""
    from perfscale.engines.dask_engine import _prologue
    from perfscale.engines.parsl_engine import worker_init
    from perfscale.sched.arrays import stage_arrays
    from perfscale.sched.render import render_array
    from perfscale.spec.common import export_lines
    from perfscale.spec.site import load_site
    from tests.test_sched_render import _tasks

    value = "$(touch pwned) `touch pwned` ' \" ; touch pwned"
    site = load_site("quartz").model_copy(update={"env": {"HOSTILE": value}})
    (job,) = stage_arrays("s", "p", _tasks(1), site)
    script = render_array(job, site, tmp_path / "run").script
    exports = [ln for ln in script.splitlines() if ln.startswith("export HOSTILE=")]
    for shell in (worker_init(site), "\n".join(_prologue(site)), *exports):
        lines = [ln for ln in shell.splitlines() if ln.startswith("export ")]  # module loads need a cluster
        done = subprocess.run(
            ["bash", "-c", "\n".join([*lines, 'printf %s "$HOSTILE"'])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout == value
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(SpecError, match="'A B' is not an environment variable name"):
        export_lines({"A B": "x"})  # names that skipped validation (model_copy) are still checked


def test_numbers_a_site_cannot_have_are_refused_before_the_run_folder_exists(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nengine: local\ncores_per_node: -4\nmemory_gb_per_node: -1\nmax_workers: 0\n"
    )
    (tmp_path / "study.yaml").write_text("name: s\n" + NOOP_STAGES)
    done = perfscale("run", "study.yaml", "--site", "bad.yaml", "--run-dir", "run", cwd=tmp_path)
    err = assert_one_line_error(done, "bad.yaml: 3 problem(s)")
    assert "bad.yaml:3: cores_per_node: must be 'auto' or a whole number >= 1" in err
    assert "bad.yaml:4: memory_gb_per_node: must be 'auto' or a number > 0" in err
    assert "bad.yaml:5: max_workers: must be 'auto' or a whole number >= 1" in err
    assert not (tmp_path / "run").exists()
    done = perfscale("run", "study.yaml", "--workers", "0", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 2 and "--workers: must be a whole number >= 1" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("field", "value"), [("cores_per_node", "2.5"), ("memory_gb_per_node", ".inf"), ("max_workers", "true")]
)
def test_site_numbers_must_be_finite_whole_counts(tmp_path, field, value):
    from perfscale.spec.site import load_site

    (tmp_path / "bad.yaml").write_text(f"name: bad\n{field}: {value}\n")
    with pytest.raises(SpecError, match=rf"bad.yaml:2: {field}: must be 'auto' or a"):
        load_site(tmp_path / "bad.yaml")
    (tmp_path / "ok.yaml").write_text(f"name: ok\n{field}: 2\n")
    assert getattr(load_site(tmp_path / "ok.yaml"), field) == 2


# ---- one-line errors instead of tracebacks ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: s\nstages:\n  p:\n    kind: profile\n    params: {command: 'true', timeout_s: .inf}\n",
            "study.yaml:5: stages.p.params.timeout_s: must be a finite number; give a finite bound",
        ),
        (
            "name: s\nstages:\n  s:\n    kind: noop\n    grid: {product: {x: [1, .nan]}}\n",
            "study.yaml:5: stages.s.grid.product.x.1: must be a finite number",
        ),
        (
            "name: s\nstages:\n  s:\n    kind: noop\n    resources: {walltime: .inf}\n",
            "study.yaml:5: stages.s.resources.walltime: walltime must be a finite, positive number",
        ),
        ("name: s\nseed: 99999999999999999999\n" + NOOP_STAGES, "study.yaml:2: seed: Input should be less"),
        ("name: s\nstages:\n  s:\n    kind: noop\n    seeds: [1, -1]\n", "study.yaml:5: stages.s.seeds.1"),
        (
            "name: s\nstages:\n  s:\n    kind: noop\n    params: {day: 2024-01-01}\n",
            "study.yaml:5: stages.s.params.day: not a plain value (YAML read a date",
        ),
        ("name: s\ndescription: caf\xe9\n" + NOOP_STAGES, "study.yaml:2: not UTF-8 text (byte 0xe9"),
    ],
    ids=["inf-param", "nan-grid", "inf-walltime", "huge-seed", "negative-seed", "date", "latin-1"],
)
def test_bad_numbers_and_bytes_in_a_study_are_one_line_errors(tmp_path, text, expected):
    study = tmp_path / "study.yaml"
    study.write_bytes(text.encode("latin-1"))
    done = perfscale("plan", study, "--out", tmp_path / "p.parquet", cwd=tmp_path)
    assert_one_line_error(done, expected)
    assert not (tmp_path / "p.parquet").exists()


def test_cli_arguments_that_name_nothing_are_one_line_errors(study_dir):
    study = study_dir / "study.yaml"
    study.write_text(
        'name: s\nstages:\n  sq:\n    kind: function\n    params: {callable: "fns.py:square"}\n'
        "    grid: {product: {x: [1, 2]}}\n"
    )
    (study_dir / "out").mkdir()
    done = perfscale("plan", study, "--out", "out", cwd=study_dir)
    assert_one_line_error(done, "--out out is a folder; give a file path, such as out/s.plan.parquet")
    assert (
        perfscale(
            "run", study, "--run-dir", "run", "--engine", "local", "--no-report", cwd=study_dir
        ).returncode
        == 0
    )
    done = perfscale("show", "run", "sq", "--columns", "x,nosuch", cwd=study_dir)
    assert_one_line_error(
        done, "--columns: stage 'sq' of run run has no column(s) nosuch; its columns are x, y"
    )
    done = perfscale("task", "run", "nowhere/plan.parquet", "0", cwd=study_dir)
    assert_one_line_error(done, "nowhere/plan.parquet: no such plan file; give RUN/plan.parquet")


# ---- grids with no tasks ---------------------------------------------------------------------------------
EMPTIED = """\
name: empty
stages:
  a:
    kind: noop
    grid:
      product: {x: [1, 2]}
      exclude:
        - {x: [1, 2]}
  b:
    kind: noop
    inputs: [a]
"""


def test_a_grid_emptied_by_exclude_is_refused_at_plan_time(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(EMPTIED)
    done = perfscale("run", study, "--run-dir", "run", "--engine", "local", "--no-report", cwd=tmp_path)
    assert_one_line_error(done, "study.yaml:7: stages.a.grid.exclude: the rules exclude every grid point")
    assert not (tmp_path / "run").exists()


def test_no_seeds_is_refused_at_load(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(NOOP_STAGES.join(["name: s\n", "    seeds: []\n"]))
    done = perfscale("plan", study, "--out", "p.parquet", cwd=tmp_path)
    assert_one_line_error(done, "study.yaml:5: stages.s.seeds: an empty list gives the stage no tasks")
    assert not (tmp_path / "p.parquet").exists()


# ---- stage params: every problem, with its line ----------------------------------------------------------
TYPOS = """\
name: typos
stages:
  p:
    kind: profile
    params:
      command: "echo {size} {missing}"
      colectors: [perf]
      envv: {A: "1"}
      warmup: WARMUP
      fom: {"bad name": "x(\\\\d+)"}
    grid:
      product: {size: [1, 2], threads: [[1], [2]]}
"""


def test_stage_params_errors_are_all_shown_with_their_lines(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(TYPOS.replace("WARMUP", "-1"))
    done = perfscale("plan", study, "--out", "p.parquet", cwd=tmp_path)
    err = assert_one_line_error(done, "study.yaml: stages.p.params at grid point", "4 problem(s)")
    assert "study.yaml:9: stages.p.params.warmup: Input should be greater than or equal to 0" in err
    assert "study.yaml:7: stages.p.params.colectors: unknown field; did you mean 'collectors'?" in err
    assert "study.yaml:8: stages.p.params.envv: unknown field; did you mean 'env'?" in err
    assert "study.yaml:12: stages.p.grid.product.threads: variable 'threads': must be a string" in err
    # once the fields are valid, the problems that need them come too, all at once
    study.write_text(TYPOS.replace("WARMUP", "1"))
    err = assert_one_line_error(perfscale("plan", study, "--out", "p.parquet", cwd=tmp_path), "5 problem(s)")
    assert "study.yaml:10: stages.p.params.fom.bad name: not a valid column name" in err
    assert "study.yaml:6: stages.p.params.command: unknown placeholder {missing}" in err
    assert not (tmp_path / "p.parquet").exists()


# ---- planning cost ---------------------------------------------------------------------------------------
def _profile_study(events: list[list[str]], sizes: int) -> Study:
    grid = {"size": list(range(sizes)), "papi_events": events}
    stage = {"kind": "profile", "params": {"command": "true {size}", "collectors": ["papi"]}}
    return Study.model_validate({"name": "p", "stages": {"p": {**stage, "grid": {"product": grid}}}})


def _site(**counters: object) -> Site:
    return Site.model_validate(
        {"name": "nodes", "scheduler": "slurm", "counters": {"papi": True, **counters}}
    )


def test_event_checks_run_once_per_distinct_event_set_and_site(monkeypatch):
    from perfscale.stages import profile

    calls: list[tuple[str, ...]] = []
    real = profile._check_papi_events

    def counted(params: profile.ProfileParams, site: Site | None) -> None:
        calls.append(tuple(params.papi_events))
        real(params, site)

    monkeypatch.setattr(profile, "_check_papi_events", counted)
    lists = [["PAPI_TOT_INS"], ["PAPI_TOT_CYC", "perf::TASK-CLOCK"]]
    listed = _site(papi_native_events=["perf::*"])
    plan = build_plan(_profile_study(lists, 50), "study.yaml", listed)
    assert len(plan.tasks) == 100
    assert sorted(calls) == sorted(map(tuple, lists))  # once per distinct list, not at each of 100 points
    # the same study against a site whose nodes do not know perf::TASK-CLOCK: checked again, and refused
    with pytest.raises(SpecError, match=r"'perf::TASK-CLOCK' is not among the events site 'nodes' lists"):
        build_plan(_profile_study(lists, 50), "study.yaml", _site(papi_native_events=["skx::*"]))
    # a bad list late in a grid is still found
    with pytest.raises(SpecError, match=r"papi_events: .*'PAPI_NOPE' is not a PAPI preset"):
        build_plan(_profile_study([*lists, ["PAPI_NOPE"]], 50), "study.yaml", listed)
