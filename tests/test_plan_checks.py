"""Everything a study names is checked at plan time: generators and their hyperparameters, metrics and their
options, the stages a stage reads, conditions and importers. Each problem fails `perfscale plan` with the
study file's line, the field and the choices, before anything runs.

The generator and metric cases are parametrized over the registries, so a new generator or metric is
covered as soon as it is registered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from perfscale.cli import main
from perfscale.generators import hyperparameters_model, list_generators
from perfscale.metrics import list_metrics
from perfscale.options import option_problems
from perfscale.plan import build_plan
from perfscale.spec import load_study

ROOT = Path(__file__).resolve().parents[1]

STUDY = """\
name: checks
stages:
  data:
    kind: ingest
    params: {kind: sklearn, source: iris}
  split:
    kind: split
    inputs: [data]
    params: {source: data}
  train:
    kind: train
    inputs: [split]
    params:
      source: split
      generator: GENERATOR
      hyperparameters: HYPERPARAMETERS
  sample:
    kind: sample
    foreach: train
    params: {rows: 10, conditions: "species == 'setosa'"}
  evaluate:
    kind: evaluate
    foreach: sample
    inputs: [split]
    params:
      source: split
      metrics: METRICS
      options: OPTIONS
  predict:
    kind: predict_by_generation
    foreach: train
    inputs: [split]
    params: {source: split, target: species}
  recommend:
    kind: recommend
    foreach: train
    params: {conditions: "species == 'setosa'", columns: [species]}
"""

#: values tried in turn to find one a field rejects: every declared field must reject one of them
CANDIDATES: list[Any] = ["x", 5, ""]


def study_text(**fields: Any) -> str:
    values = {
        "GENERATOR": "gaussian_copula",
        "HYPERPARAMETERS": {},
        "METRICS": ["column_shapes"],
        "OPTIONS": {},
    } | fields
    text = STUDY
    for key, value in values.items():
        text = text.replace(key, value if isinstance(value, str) else json.dumps(value))
    return text


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the first line holding `fragment`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def plan_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> str:
    """`perfscale plan` of `text`: it must fail with one `perfscale: error:` and no plan written."""
    (tmp_path / "study.yaml").write_text(text)
    out = tmp_path / "plan.parquet"
    assert main(["plan", str(tmp_path / "study.yaml"), "--site", "local", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perfscale: error: ") and "Traceback" not in err
    assert not out.exists()
    return err


def rejected_value(model: Any, field: str) -> Any:
    """The first candidate value `model` rejects for `field`."""
    for value in CANDIDATES:
        if option_problems(model, {field: value}, "option", "test"):
            return value
    raise AssertionError(f"{model.__name__}.{field} accepts each of {CANDIDATES}: give it a type or bounds")


# ---------------------------------------------------------------------------------------- a good study


def test_a_good_study_plans_with_every_generator(tmp_path: Path):
    for name in list_generators():
        (tmp_path / "study.yaml").write_text(study_text(GENERATOR=name))
        plan = build_plan(load_study(tmp_path / "study.yaml"), str(tmp_path / "study.yaml"))
        assert plan.of_stage("train")[0].params["generator"] == name


@pytest.mark.parametrize("workflow", sorted(p.name for p in (ROOT / "workflows").glob("*.yaml")))
def test_every_workflow_plans(workflow: str, tmp_path: Path):
    out = tmp_path / "plan.parquet"
    assert main(["plan", str(ROOT / "workflows" / workflow), "--site", "local", "--out", str(out)]) == 0
    assert out.is_file()


# ---------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("generator", list_generators())
def test_a_misspelt_hyperparameter_fails_the_plan(generator: str, tmp_path: Path, capsys):
    text = study_text(GENERATOR=generator, HYPERPARAMETERS={"epocs": 3})
    err = plan_error(tmp_path, capsys, text)
    fields = sorted(hyperparameters_model(generator).model_fields)
    line = line_of(text, "hyperparameters:")
    assert (
        f"study.yaml:{line}: stages.train.params.hyperparameters.epocs: unknown hyperparameter for "
        f"{generator}; choose one of {', '.join(fields)}\n" in err
    )


@pytest.mark.parametrize("generator", list_generators())
def test_a_bad_value_of_every_hyperparameter_fails_the_plan(generator: str, tmp_path: Path, capsys):
    model = hyperparameters_model(generator)
    assert model.model_fields, f"{generator} declares no hyperparameters"
    bad = {field: rejected_value(model, field) for field in model.model_fields}
    text = study_text(GENERATOR=generator, HYPERPARAMETERS=bad)
    err = plan_error(tmp_path, capsys, text)
    line = line_of(text, "hyperparameters:")
    for field, value in bad.items():
        assert f"study.yaml:{line}: stages.train.params.hyperparameters.{field}" in err, field
        assert f"(got {value!r})" in err
    assert f"{len(bad)} problem(s)" in err


def test_a_hyperparameter_typo_in_a_grid_points_at_its_entry(tmp_path: Path, capsys):
    text = study_text().replace(
        "      hyperparameters: {}\n",
        "    grid:\n      zip:\n        generator: [ctgan, tvae]\n        hyperparameters:\n"
        "          - {epochs: 2}\n          - {epocs: 2}\n",
    )
    text = text.replace("      generator: gaussian_copula\n", "")
    err = plan_error(tmp_path, capsys, text)
    line = line_of(text, "{epocs: 2}")
    assert (
        f"study.yaml:{line}: stages.train.grid.zip.hyperparameters.1.epocs: unknown hyperparameter for tvae"
        in err
    )


def test_an_unknown_generator_fails_the_plan(tmp_path: Path, capsys):
    text = study_text(GENERATOR="tvea")
    err = plan_error(tmp_path, capsys, text)
    choices = ", ".join(list_generators())
    assert (
        f"study.yaml:{line_of(text, 'generator: tvea')}: stages.train.params.generator: unknown generator "
        f"'tvea'; choose one of {choices}" in err
    )


def test_hyperparameter_models_load_no_model_library():
    """The registry answers the planner without torch, sdv or transformers: checked in a fresh interpreter,
    which also plans a study that trains every generator."""
    code = f"""
import json, sys
from pathlib import Path
from perfscale.generators import hyperparameter_problems, hyperparameters_model, list_generators
for name in list_generators():
    assert hyperparameters_model(name).model_fields
    assert hyperparameter_problems(name, {{"epocs": 1}})
from perfscale.plan import build_plan
from perfscale.spec import load_study
import tempfile
folder = Path(tempfile.mkdtemp())
(folder / "study.yaml").write_text({study_text(GENERATOR="tabddpm")!r})
build_plan(load_study(folder / "study.yaml"), "study.yaml")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sdv", "transformers"))))
"""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []


# ---------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("metric", [m.name for m in list_metrics()])
def test_an_unknown_metric_option_fails_the_plan(metric: str, tmp_path: Path, capsys):
    text = study_text(METRICS=[metric], OPTIONS={metric: {"bogus": 1}})
    err = plan_error(tmp_path, capsys, text)
    options = sorted(next(m for m in list_metrics() if m.name == metric).options)
    choices = f"choose one of {', '.join(options)}" if options else f"{metric} takes no options; remove it"
    line = line_of(text, "options:")
    assert f"study.yaml:{line}: stages.evaluate.params.options.{metric}.bogus: unknown option" in err
    assert choices in err


@pytest.mark.parametrize("metric", [m.name for m in list_metrics() if m.options])
def test_a_bad_value_of_every_metric_option_fails_the_plan(metric: str, tmp_path: Path, capsys):
    model = next(m for m in list_metrics() if m.name == metric).options_model
    bad = {field: rejected_value(model, field) for field in model.model_fields}
    text = study_text(METRICS=[metric], OPTIONS={metric: bad})
    err = plan_error(tmp_path, capsys, text)
    line = line_of(text, "options:")
    for field, value in bad.items():
        assert f"study.yaml:{line}: stages.evaluate.params.options.{metric}.{field}: " in err, field
        assert f"(got {value!r})" in err
    assert f"{len(bad)} problem(s)" in err


def test_unknown_metric_names_fail_the_plan(tmp_path: Path, capsys):
    text = study_text(METRICS=["dcr", "kl_divergnce"], OPTIONS={"jsdd": {}})
    err = plan_error(tmp_path, capsys, text)
    known = ", ".join(sorted(m.name for m in list_metrics()))
    assert (
        f"study.yaml:{line_of(text, 'metrics:')}: stages.evaluate.params.metrics.1: unknown metric "
        f"'kl_divergnce'; choose one of {known}" in err
    )
    assert f"stages.evaluate.params.options.jsdd: unknown metric 'jsdd'; choose one of {known}" in err


# ---------------------------------------------------------------------------------------- stages read


@pytest.mark.parametrize("stage", ["split", "train", "evaluate", "predict"])
def test_a_source_missing_from_inputs_fails_the_plan(stage: str, tmp_path: Path, capsys):
    lines = study_text().splitlines(keepends=True)
    start = line_of("".join(lines), f"  {stage}:")
    at = next(i for i in range(start, len(lines)) if "source: " in lines[i])
    lines[at] = (
        lines[at].replace("source: data", "source: nowhere").replace("source: split", "source: nowhere")
    )
    text = "".join(lines)
    err = plan_error(tmp_path, capsys, text)
    assert (
        f"study.yaml:{at + 1}: stages.{stage}.params.source: stage 'nowhere' is not in this stage's inputs"
        in err
    )
    assert "list it in `inputs` or fix the name" in err


def test_a_stage_that_reads_a_trained_model_needs_a_train_foreach(tmp_path: Path, capsys):
    text = study_text().replace("    foreach: train\n    params: {rows: 10", "    params: {rows: 10")
    err = plan_error(tmp_path, capsys, text)
    assert (
        f"study.yaml:{line_of(text, '  sample:')}: stages.sample.foreach: this kind runs once per upstream "
        "task: set `foreach: <a train stage>`" in err
    )
    text = study_text().replace(
        "    foreach: train\n    inputs: [split]\n    params: {source: split, target",
        "    foreach: split\n    inputs: [split]\n    params: {source: split, target",
    )
    err = plan_error(tmp_path, capsys, text)
    assert "stages.predict.foreach: stage 'split' is a split stage; this kind reads a train stage" in err


def test_conditions_that_do_not_parse_fail_the_plan(tmp_path: Path, capsys):
    text = study_text().replace(
        "conditions: \"species == 'setosa'\", columns", 'conditions: "species >>= 3", columns'
    )
    err = plan_error(tmp_path, capsys, text)
    assert (
        f"study.yaml:{line_of(text, '>>=')}: stages.recommend.params.conditions: conditions 'species >>= 3'"
        in err
    )


def test_an_unknown_importer_fails_the_plan(tmp_path: Path, capsys):
    text = study_text().replace("kind: sklearn", "kind: sklaern")
    err = plan_error(tmp_path, capsys, text)
    assert "study.yaml:5: stages.data.params.kind: unknown importer 'sklaern'; choose one of " in err


METRIC_STUDY = """\
name: ms
stages:
  data:
    kind: ingest
    params: {kind: sklearn, source: iris}
  split:
    kind: split
    inputs: [data]
    params: {source: data}
  corrupt:
    kind: corrupt
    inputs: [split]
    params: {source: split, corruption: noise}
  evaluate:
    kind: evaluate
    foreach: corrupt
    inputs: [split]
    params: {source: split}
  study:
    kind: metric_study
    inputs: [evaluate]
    params:
      sources: [evaluate, split]
      reference: ml_eficacy/synthetic/accuracy
      metrics: [dcr, kl]
      headline: {wassersteen: {component: mean}}
"""


def test_a_metric_study_checks_its_sources_reference_and_metrics(tmp_path: Path, capsys):
    err = plan_error(tmp_path, capsys, METRIC_STUDY)
    assert "study.yaml:23: stages.study.params.sources.1: stage 'split' is not in this stage's inputs" in err
    assert "study.yaml:24: stages.study.params.reference: unknown metric 'ml_eficacy'; choose one of" in err
    assert "study.yaml:25: stages.study.params.metrics.1: unknown metric 'kl'; choose one of" in err
    assert "study.yaml:26: stages.study.params.headline.wassersteen: unknown metric 'wassersteen'" in err
    assert "4 problem(s)" in err


# ---------------------------------------------------------------------------------------- the hook


def test_plan_check_runs_once_per_distinct_params(tmp_path: Path):
    from perfscale.stages.base import StageParams, stage_kind

    seen: list[dict[str, Any]] = []

    class CountedParams(StageParams):
        x: int = 0
        y: str = Field("a")

        def plan_check(self, check: Any) -> None:
            seen.append(self.model_dump())

    @stage_kind("test_counted_plan_check", CountedParams)
    def counted(ctx: Any, params: CountedParams) -> None:  # pragma: no cover (never run)
        raise AssertionError

    (tmp_path / "study.yaml").write_text(
        "name: counted\nstages:\n  s:\n    kind: test_counted_plan_check\n    repetitions: 4\n"
        "    seeds: [1, 2]\n    params: {y: b}\n    grid: {product: {x: [1, 2, 3]}}\n"
    )
    plan = build_plan(load_study(tmp_path / "study.yaml"), "study.yaml")
    assert len(plan.tasks) == 3 * 4 * 2
    assert seen == [{"x": 1, "y": "b"}, {"x": 2, "y": "b"}, {"x": 3, "y": "b"}]


def test_the_cli_refuses_a_typo_in_one_line_form(tmp_path: Path):
    """The real command line, in its own process: exit status 2, the error, no traceback."""
    text = study_text(GENERATOR="tvae", HYPERPARAMETERS={"epocs": 3})
    (tmp_path / "study.yaml").write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "perfscale.cli", "plan", "study.yaml", "--site", "local"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        f"study.yaml:{line_of(text, 'hyperparameters:')}: stages.train.params.hyperparameters.epocs: unknown "
        "hyperparameter for tvae; choose one of batch_size, compress_dims, decompress_dims, embedding_dim, "
        "enable_gpu, enforce_min_max_values, enforce_rounding, epochs, l2scale, loss_factor, verbose"
    ) in done.stderr
    assert not (tmp_path / "checks.plan.parquet").exists()
