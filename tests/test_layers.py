"""The spine's layers run one way: what importing and planning load, and the stage-kind table.

Each import check runs in a fresh interpreter (`sys.modules` of this one holds whatever other tests loaded).
"""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize(
    "module",
    ["perfscale.plan", "perfscale.store", "perfscale.store.run", "perfscale.spec"],
)
def test_plan_and_store_import_light(module: str):
    modules = loaded_after(f"import {module}")
    assert heavy(modules) == []
    assert "pandas" not in modules  # pyarrow.dataset imports it: the store imports that where it reads


def test_the_stages_package_loads_no_stage_module():
    modules = loaded_after("import perfscale.stages")
    assert sorted(m for m in heavy(modules)) == ["perfscale.stages", "perfscale.stages.base"]


def test_the_sacct_importer_loads_no_array_mode():
    sched = sorted(
        m for m in loaded_after("import perfscale.ingest.sacct") if m.startswith("perfscale.sched")
    )
    assert sched == ["perfscale.sched", "perfscale.sched.slurm_fields"]


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


# ---------------------------------------------------------------------------------------- the import graph
# The layers, lowest first. A module belongs to the entry with the longest matching prefix (the bare
# `perfscale` matches only the package's own __init__). An import may go to a lower layer, or stay inside its
# own package (perfscale.X) within one layer; packages of one layer never import each other. Every import
# counts, at module level or inside a function (a lazy import still runs), except those under
# `if TYPE_CHECKING:` (annotations only, never run). Plugin lookups by name (`import_module` of the strings in
# plan.kinds.KINDS, engines.base.ENGINES, sched.base.SCHEDULERS) are not edges: they are how a lower layer
# finds what registers itself above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("perfscale.version", "perfscale.errors", "perfscale.devices", "perfscale.environ")),
    (
        "leaves",
        (
            "perfscale.tabular",
            "perfscale.options",
            "perfscale.extras",
            "perfscale.logs",
            "perfscale.store.atomic",
            "perfscale.store.attempt",
            "perfscale.store.space",
            "perfscale.sched.slurm_fields",
            "perfscale.resources",
            "perfscale.orphans",
            "perfscale.gpus",
            "perfscale.extras",
            "perfscale.logs",
        ),
    ),
    # the scheduler table the site model checks `scheduler:` and `launcher:` against
    ("scheduler table", ("perfscale.sched.base", "perfscale.sched.mpi", "perfscale.sched.client")),
    # perfscale.distributed: the torch.distributed bootstrap from MPI and each rank's share of a batch, which
    # the training loops below call (its task module, called by execute, sits higher)
    ("distributed bootstrap", ("perfscale.distributed",)),
    # libraries: know nothing of studies, plans or runs
    ("libraries", ("perfscale.collect", "perfscale.ingest", "perfscale.llm")),
    ("models and measures", ("perfscale.generators", "perfscale.metrics", "perfscale.models")),
    ("spec", ("perfscale.spec",)),
    ("plan", ("perfscale.plan",)),
    ("store", ("perfscale.store",)),
    ("schedulers", ("perfscale.sched",)),
    # what stage outputs mean, and the report: they read stages' tables and import no stage
    ("results", ("perfscale.results",)),
    ("status", ("perfscale.status",)),
    ("report", ("perfscale.report",)),
    ("stages", ("perfscale.stages",)),
    ("distributed tasks", ("perfscale.distributed.task",)),  # a multi-rank task's launch and rank side
    ("execute", ("perfscale.execute",)),
    ("engines", ("perfscale.engines",)),
    ("bundles", ("perfscale.bundles",)),  # how many tasks one engine call runs (the runner asks)
    ("runner", ("perfscale.runner",)),
    ("entry points", ("perfscale.cli", "perfscale.campaign")),
    # the package's __init__: the public façade (`perfscale.Campaign`, loaded on use); every other module
    # imports the version from perfscale.version
    ("façade", ("perfscale",)),
]
PACKAGE = ROOT / "perfscale"


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def place(module: str) -> tuple[int, str]:
    """(layer index, matched prefix) of a module; KeyError if no entry matches."""
    best: tuple[int, str] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            hit = module == prefix or (prefix != "perfscale" and module.startswith(prefix + "."))
            if hit and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    if best is None:
        raise KeyError(module)
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported perfscale module, line) of every import that runs, anywhere in the file."""
    found: dict[tuple[str, int], None] = {}  # in order, once each
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(((a.name, node.lineno), None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found[(sub if sub in known else base, node.lineno)] = None
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return [(m, line) for m, line in found if m == "perfscale" or m.startswith("perfscale.")]


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_module_has_a_layer():
    unplaced = []
    for module in module_names():
        try:
            place(module)
        except KeyError:
            unplaced.append(module)
    assert unplaced == [], f"add these modules to LAYERS in tests/test_layers.py: {unplaced}"


def test_imports_run_one_way():
    known = module_names()
    wrong = []
    for module, path in known.items():
        layer, _ = place(module)
        for target, line in imports_of(module, path, known):
            to_layer, _ = place(target)
            same_package = package_of(target) == package_of(module)
            if to_layer > layer or (to_layer == layer and not same_package):
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line}: {module} ({LAYERS[layer][0]}) imports {target} "
                    f"({LAYERS[to_layer][0]})"
                )
    assert wrong == [], "imports against the layer order:\n" + "\n".join(wrong)


def test_the_checker_sees_lazy_imports_and_skips_type_checking(tmp_path: Path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from perfscale.stages import base\n"
        "def f():\n    from perfscale.report import html\n    import perfscale.cli\n"
    )
    found = imports_of("perfscale.probe", source, module_names())
    assert found == [("perfscale.report.html", 5), ("perfscale.cli", 6)]


# ------------------------------------------------------------------------------------ kind spelling
OLD_NAME = """\
name: spelled
stages:
  data: {kind: noop}
  train: {kind: train, inputs: [data], params: {source: data, generator: smote}}
  predict:
    kind: predict-by-generation
    foreach: train
    inputs: [data]
    params: {source: data, target: y}
"""


def test_kind_names_are_snake_case():
    assert all(name == name.lower() and "-" not in name for name in kinds.KINDS)
    assert all(new in kinds.KINDS and old not in kinds.KINDS for old, new in kinds.RENAMED.items())


def test_an_old_kind_name_plans_with_a_deprecation_warning(write_study):
    from perfscale.plan import build_plan
    from perfscale.spec import load_study

    old = write_study(OLD_NAME)
    with pytest.warns(DeprecationWarning, match=r"study.yaml:6: .*'predict-by-generation' is now spelled"):
        plan = build_plan(load_study(old), str(old))
    new = write_study(OLD_NAME.replace("predict-by-generation", "predict_by_generation"), "new.yaml")
    assert [t.kind for t in plan.tasks] == ["noop", "train", "predict_by_generation"]
    assert [t.key for t in plan.tasks] == [t.key for t in build_plan(load_study(new), str(new)).tasks]


def test_the_cli_names_an_old_kind_in_one_line(write_study, tmp_path: Path, capsys):
    from perfscale.cli import main

    assert main(["plan", str(write_study(OLD_NAME)), "--out", str(tmp_path / "p.parquet")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("perfscale: warning: ") and "study.yaml:6" in warned[0]
