"""Study and site validation: good files load; bad ones fail with file, field, line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfscale.errors import SpecError
from perfscale.plan import build_plan
from perfscale.spec import load_site, load_study
from perfscale.spec.common import format_walltime, parse_walltime

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: demo
seed: 7
retry: {app_error: 2, bad_input: 0}
stages:
  square:
    kind: function
    params: {callable: "fns.py:square"}
    grid:
      product: {x: [1, 2, 3]}
    repetitions: 2
    resources: {cores: 2, memory_gb: 0.5, walltime: "00:10:00"}
  total:
    kind: function
    params: {callable: "fns.py:total"}
    inputs: [square]
"""


def test_good_study_loads(write_study):
    study = load_study(write_study(GOOD))
    assert list(study.stages) == ["square", "total"]
    assert study.resources_of("square").walltime == 600
    assert study.retry.app_error == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("seed: 7", "seed: 7\ncolour: blue"), ["study.yaml:3", "colour", "unknown field"]),
        (
            GOOD.replace("repetitions: 2", "repetitions: lots"),
            ["study.yaml:10", "stages.square.repetitions", "integer"],
        ),
        (GOOD.replace("name: demo\n", ""), ["name", "required field is missing"]),
        (GOOD.replace("inputs: [square]", "inputs: [squares]"), ["unknown stage 'squares'"]),
        (GOOD.replace('walltime: "00:10:00"', 'walltime: "ten minutes"'), ["walltime", "HH:MM:SS"]),
        (GOOD.replace("product: {x: [1, 2, 3]}", "product: {x: []}"), ["empty list"]),
        (GOOD.replace("app_error: 2, bad_input: 0", "bad_input: 3"), ["retry.bad_input"]),
    ],
)
def test_bad_study_names_file_field_and_line(write_study, text, expected):
    with pytest.raises(SpecError) as info:
        load_study(write_study(text))
    for fragment in expected:
        assert fragment in str(info.value)


def test_malformed_yaml_names_line(write_study):
    with pytest.raises(SpecError, match=r"study.yaml:\d+:\d+: malformed YAML"):
        load_study(write_study("name: x\nstages:\n  a: [unclosed\n"))


def test_unknown_stage_kind_and_bad_params_fail_at_plan_time(write_study):
    study = load_study(
        write_study(GOOD.replace('kind: function\n    params: {callable: "fns.py:total"}', "kind: telepathy"))
    )
    with pytest.raises(SpecError, match="unknown stage kind 'telepathy'"):
        build_plan(study, "study.yaml")
    study = load_study(write_study(GOOD.replace('callable: "fns.py:square"', 'callable: "no-colon"')))
    with pytest.raises(SpecError, match=r"study.yaml: stages\.square\.params\.callable: callable must"):
        build_plan(study, "study.yaml")


def test_stage_order_and_self_reference_checked(write_study):
    bad = GOOD.replace(
        '  total:\n    kind: function\n    params: {callable: "fns.py:total"}\n    inputs: [square]\n', ""
    )
    bad = bad.replace(
        "  square:\n",
        '  total:\n    kind: function\n    params: {callable: "fns.py:total"}\n'
        "    inputs: [square]\n  square:\n",
    )
    with pytest.raises(SpecError, match="must be listed before it"):
        load_study(write_study(bad))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 5400), ("01:30", 90), ("01:00:00", 3600), ("2-00:00:00", 172800), ("1-2", 93600), (45.5, 45.5)],
)
def test_walltime(text, seconds):
    assert parse_walltime(text) == seconds


def test_walltime_round_trip():
    assert format_walltime(parse_walltime("1-02:03:04")) == "1-02:03:04"
    with pytest.raises(ValueError):
        parse_walltime("-5")


def test_local_site_and_unknown_site():
    site = load_site("local")
    assert site.scheduler == "none" and site.engine == "parsl" and site.workers >= 1
    with pytest.raises(SpecError, match=r"unknown site 'atlantis'; known sites: .*local"):
        load_site("atlantis")


def test_site_unknown_field(tmp_path):
    (tmp_path / "s.yaml").write_text("name: s\nscheduler: slurm\ncores_per_node: 36\nqueue_depth: 4\n")
    with pytest.raises(SpecError, match=r"s.yaml:4: queue_depth: unknown field"):
        load_site(tmp_path / "s.yaml")


def test_every_shipped_workflow_plans():
    for path in sorted((ROOT / "workflows").glob("*.yaml")):
        plan = build_plan(load_study(path), str(path))
        assert plan.tasks, path
