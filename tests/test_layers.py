"""The spine's layers run one way: what importing and planning load, and the stage-kind table.

Each import check runs in a fresh interpreter (`sys.modules` of this one holds whatever other tests loaded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perfscale.plan import kinds

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("perfscale.stages", "perfscale.generators", "perfscale.llm", "torch", "sdv", "transformers")


def loaded_after(code: str, cwd: Path = ROOT) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, check=True, env=_env()
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("module", ["perfscale.plan", "perfscale.store", "perfscale.store.run"])
def test_plan_and_store_import_light(module: str):
    modules = loaded_after(f"import {module}")
    assert heavy(modules) == []
    assert "pandas" not in modules or module == "perfscale.store.run"


def test_planning_loads_only_the_kinds_a_study_names(tmp_path: Path):
    (tmp_path / "study.yaml").write_text(
        "name: light\nstages:\n  a:\n    kind: noop\n    grid: {product: {x: [1, 2]}}\n"
    )
    modules = loaded_after(
        """
        from perfscale.plan import build_plan
        from perfscale.spec import load_study
        plan = build_plan(load_study("study.yaml"), "study.yaml")
        assert len(plan.tasks) == 2, plan
        """,
        cwd=tmp_path,
    )
    stages = sorted(m for m in modules if m.startswith("perfscale.stages."))
    assert stages == ["perfscale.stages.base", "perfscale.stages.function"]
    assert [m for m in heavy(modules) if not m.startswith("perfscale.stages")] == []


def test_every_kind_in_the_table_registers_itself():
    found = kinds.registered_kinds()
    assert set(kinds.KINDS) <= set(found)
    for name, where in kinds.KINDS.items():
        module, function = where.split(":")
        assert found[name].run.__module__ == module and found[name].run.__name__ == function


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(Exception, match=r"x.yaml: unknown stage kind 'telepathy'; known kinds: .*noop"):
        kinds.get_stage_kind("telepathy", where="x.yaml")
