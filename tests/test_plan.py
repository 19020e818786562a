"""Grid expansion and task keys."""

from __future__ import annotations

import hashlib

from perfscale.plan import build_plan, expand_grid, stage_digest, task_key
from perfscale.spec.study import Grid, Study


def test_product_zip_exclude():
    grid = Grid(
        product={"kernel": ["a", "b"], "threads": [1, 2]},
        zip={"size": [10, 20], "iters": [5, 3]},
        exclude=[{"kernel": "b", "threads": [2]}, {"size": 20, "kernel": "a"}],
    )
    points = expand_grid(grid)
    assert points == [
        {"kernel": "a", "threads": 1, "size": 10, "iters": 5},
        {"kernel": "a", "threads": 2, "size": 10, "iters": 5},
        {"kernel": "b", "threads": 1, "size": 10, "iters": 5},
        {"kernel": "b", "threads": 1, "size": 20, "iters": 3},
    ]


def test_empty_grid_is_one_point():
    assert expand_grid(Grid()) == [{}]


def test_key_is_stable_and_order_independent():
    a = task_key("profile", "function", {"x": 1, "y": "z"}, {"up": "d1"}, None, version="0.1.0")
    b = task_key("profile", "function", {"y": "z", "x": 1}, {"up": "d1"}, None, version="0.1.0")
    assert a == b
    # the documented contract: sha256 of canonical JSON (sorted keys, no spaces), first 20 hex digits
    doc = (
        b'{"inputs":{"up":"d1"},"kind":"function","params":{"x":1,"y":"z"},"stage":"profile",'
        b'"upstream":null,"version":"0.1.0"}'
    )
    assert a == hashlib.sha256(doc).hexdigest()[:20] == "b570b4a6aa0e9b5d7d53"
    assert task_key("profile", "function", {"x": 2, "y": "z"}, {"up": "d1"}, None, version="0.1.0") != a
    assert task_key("profile", "function", {"x": 1, "y": "z"}, {"up": "d2"}, None, version="0.1.0") != a
    assert task_key("profile", "function", {"x": 1, "y": "z"}, {"up": "d1"}, None, version="0.2.0") != a
    assert stage_digest(["b", "a"]) == stage_digest(["a", "b"])


def _study(**square) -> Study:
    stage = {"kind": "function", "params": {"callable": "fns.py:square"}, "grid": {"product": {"x": [1, 2]}}}
    stage |= square
    return Study.model_validate(
        {
            "name": "t",
            "stages": {
                "square": stage,
                "total": {"kind": "function", "params": {"callable": "fns.py:total"}, "inputs": ["square"]},
                "each": {"kind": "function", "params": {"callable": "fns.py:total"}, "foreach": "square"},
            },
        }
    )


def test_plan_expansion_and_data_flow():
    plan = build_plan(_study(repetitions=2, seeds=[1, 2]))
    squares = plan.of_stage("square")
    assert len(squares) == 2 * 2 * 2
    assert {(t.params["x"], t.seed, t.rep) for t in squares} == {
        (x, s, r) for x in (1, 2) for s in (1, 2) for r in (0, 1)
    }
    assert len(plan.of_stage("total")) == 1
    assert plan.of_stage("total")[0].inputs == {"square": stage_digest(t.key for t in squares)}
    each = plan.of_stage("each")
    assert [t.upstream_key for t in each] == [t.key for t in squares]
    assert [t.index for t in plan.tasks] == list(range(len(plan.tasks)))


def test_resources_do_not_change_keys_but_params_do():
    base = build_plan(_study())
    more_cores = build_plan(_study(resources={"cores": 8, "walltime": 60}))
    assert [t.key for t in base.tasks] == [t.key for t in more_cores.tasks]
    changed = build_plan(_study(grid={"product": {"x": [1, 3]}}))
    assert base.tasks[0].key == changed.tasks[0].key  # x=1 is the same work
    assert base.tasks[1].key != changed.tasks[1].key
    # downstream keys follow their inputs
    assert base.of_stage("total")[0].key != changed.of_stage("total")[0].key


def test_plan_round_trips_through_parquet(tmp_path):
    plan = build_plan(_study(repetitions=2))
    plan.write(tmp_path / "plan.parquet")
    again = type(plan).read(tmp_path / "plan.parquet")
    assert again.tasks == plan.tasks
    assert again.study == "t"
