"""Split metric evaluation: parts by columns / column-pair blocks, combined, equal the unsplit evaluation;
an evaluate stage fanned out over parts gives the same results with 1 or 2 workers and any row order."""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from perfscale.errors import BadInput, FailureKind, SpecError, TaskFailure
from perfscale.metrics import Part, combine_parts, evaluate, get_metric, list_metrics, metric, part_columns
from perfscale.metrics import registry as registry_module
from perfscale.metrics.combine import summary_rows
from perfscale.metrics.registry import PAIR_SEPARATOR, plan_part
from perfscale.report import build_report
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.stages.evaluate import metric_options
from perfscale.tabular.meta import TableMeta, infer_meta

COLUMN_METRICS = ["column_shapes", "kl_divergence", "wasserstein", "jsd"]
# every metric that can be split, including pair metrics other modules register (iterated at collection)
SPLITTABLE = [s.name for s in list_metrics() if s.per != "table"]
PAIR_METRICS = [s.name for s in list_metrics() if s.per == "pair"]
TOL = 1e-12


def wine_tables(n_synth: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """sklearn's wine data with the class as a categorical column, a boolean and missing values; a noisy
    resample as the synthetic table."""
    rng = np.random.default_rng(seed)
    real = load_wine(as_frame=True).frame
    real["target"] = real["target"].map(lambda t: f"class_{t}")
    real["flag"] = rng.random(len(real)) < 0.3
    real.loc[::11, "ash"] = np.nan
    synth = real.sample(n_synth, replace=True, random_state=seed + 1).reset_index(drop=True)
    numeric = list(real.columns[:13])
    synth[numeric] = synth[numeric] * (1 + rng.normal(0, 0.1, (len(synth), len(numeric))))
    synth.loc[: n_synth // 10, "target"] = "class_1"
    return real, synth


def with_seed(names: list[str]) -> dict[str, dict[str, int]]:
    return {n: {"seed": 0} for n in names if "seed" in get_metric(n).options}


def combined_parts(real, synth, meta, names, k, options=None, reduce=False) -> pd.DataFrame:
    """combine_parts of all k parts; with `reduce`, each part sees only its `part_columns` (as the stage)."""
    parts = []
    columns = list(meta.columns)
    for i in range(k):
        if reduce:
            cols = part_columns(names, columns, Part(i, k))
            if not cols:  # nothing to compute (the stage writes an empty shard)
                continue
            r, s = real[cols], synth[cols]
            table = evaluate(r, s, infer_meta(r), names, options, part=(i, k), table_columns=columns)
        else:
            table = evaluate(real, synth, meta, names, options, part=(i, k))
        assert set(table["part"]) <= {i} and set(table["parts"]) <= {k}
        parts.append(table)
    return combine_parts(parts[::-1])  # the order parts arrive in does not matter


def assert_same_values(expected: pd.DataFrame, got: pd.DataFrame, tol: float = TOL) -> None:
    for name, rows in expected.groupby("metric"):
        want = dict(zip(rows["component"], rows["value"], strict=True))
        have = got[got["metric"] == name]
        have = dict(zip(have["component"], have["value"], strict=True))
        assert set(have) == set(want), (name, set(have) ^ set(want))
        worst = max(abs(have[c] - want[c]) for c in want)
        assert worst <= tol, (name, worst)
    assert set(got["metric"]) == set(expected["metric"])


@pytest.fixture
def scratch_metric():
    """Register throwaway metrics for one test and remove them afterwards (the registry is global)."""
    before = dict(registry_module._REGISTRY)
    yield metric
    registry_module._REGISTRY.clear()
    registry_module._REGISTRY.update(before)


def register_rank_pairs(register) -> str:
    """A real pair metric: |Spearman rho real - rho synth| per numeric column pair, 'mean' over pairs."""

    @register("rank_corr_gap", higher_is_better=False, per="pair", aggregate="mean")
    def rank_corr_gap(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta) -> dict[str, float]:
        rho_real, rho_synth = (t[meta.numeric].corr(method="spearman") for t in (real, synth))
        out = {
            f"{a}{PAIR_SEPARATOR}{b}": abs(float(rho_real.loc[a, b]) - float(rho_synth.loc[a, b]))
            for a, b in itertools.combinations(meta.numeric, 2)
        }
        if out:
            out["mean"] = float(np.mean(list(out.values())))
        return out

    return "rank_corr_gap"


# ---------------------------------------------------------------- split == unsplit, in process


def test_builtin_column_metrics_are_tagged_and_dcr_is_never_split():
    assert set(COLUMN_METRICS) <= set(SPLITTABLE)
    assert {n: get_metric(n).aggregate for n in COLUMN_METRICS} == {
        "column_shapes": ("score",),
        "kl_divergence": ("mean",),
        "wasserstein": ("mean",),
        "jsd": ("mean",),
    }
    assert get_metric("dcr").per == "table"


@pytest.mark.parametrize("name", SPLITTABLE)
@pytest.mark.parametrize("k", [3, 20])  # 20 parts > 15 columns: some parts get no column at all
def test_split_evaluation_combines_to_the_unsplit_one(name, k):
    real, synth = wine_tables()
    meta = infer_meta(real)
    options = with_seed([name])
    whole = evaluate(real, synth, meta, [name], options)
    assert not whole.empty
    assert_same_values(whole, combined_parts(real, synth, meta, [name], k, options, reduce=k > 3))


def test_parts_report_no_aggregate_and_each_column_once():
    real, synth = wine_tables()
    meta = infer_meta(real)
    parts = [evaluate(real, synth, meta, COLUMN_METRICS, part=(i, 3)) for i in range(3)]
    shapes = [set(p.loc[p.metric == "column_shapes", "component"]) for p in parts]
    assert all(s and "score" not in s for s in shapes)
    assert set.union(*shapes) == set(meta.columns) and sum(map(len, shapes)) == len(meta.columns)
    # jsd only has categorical/boolean columns: the part whose block holds none reports nothing for it
    assert [len(p[p.metric == "jsd"]) for p in parts] == [0, 0, 2]


@pytest.mark.parametrize("k", [1, 3, 12])
def test_pair_metric_computes_every_pair_exactly_once(scratch_metric, k):
    name = register_rank_pairs(scratch_metric)
    real, synth = wine_tables()
    meta = infer_meta(real)
    whole = evaluate(real, synth, meta, [name])
    assert len(whole) == math.comb(len(meta.numeric), 2) + 1
    parts = [evaluate(real, synth, meta, [name], part=(i, k)) for i in range(k)]
    components = pd.concat(parts)["component"].tolist()
    if k > 1:
        assert len(components) == len(set(components)) == len(whole) - 1  # each pair once, no aggregate
    assert_same_values(whole, combine_parts(parts))


def test_table_metrics_are_dealt_out_and_never_split():
    real, synth = wine_tables()
    meta = infer_meta(real)
    names = ["dcr", *COLUMN_METRICS]
    holdout = real.sample(40, random_state=3)
    whole = evaluate(real, synth, meta, names, {"dcr": {"holdout": holdout}})
    parts = [evaluate(real, synth, meta, names, {"dcr": {"holdout": holdout}}, part=(i, 2)) for i in range(2)]
    assert [set(p.loc[p.metric == "dcr", "part"]) for p in parts] == [{0}, set()]
    assert part_columns(names, list(meta.columns), Part(0, 2)) == list(meta.columns)  # dcr needs all
    assert part_columns(names, list(meta.columns), Part(1, 2)) == list(meta.columns)[8:]
    assert_same_values(whole, combine_parts(parts))


def test_shuffled_synthetic_rows_give_the_same_values():
    real, synth = wine_tables()
    meta = infer_meta(real)
    shuffled = synth.sample(frac=1, random_state=5).reset_index(drop=True)
    names = [*SPLITTABLE, "dcr"]
    first = combined_parts(real, synth, meta, names, 3, with_seed(names))
    assert_same_values(first, combined_parts(real, shuffled, meta, names, 3, with_seed(names)))


# ---------------------------------------------------------------- contracts and errors


def test_a_mistagged_metric_fails_when_split(scratch_metric):
    @scratch_metric("max_gap", higher_is_better=False, per="column", aggregate="worst")
    def max_gap(real, synth, meta):
        gaps = {c: abs(float(real[c].mean()) - float(synth[c].mean())) for c in meta.numeric}
        return {**gaps, "worst": max(gaps.values())} if gaps else {}

    @scratch_metric("with_extra", higher_is_better=False, per="column", aggregate="mean")
    def with_extra(real, synth, meta):
        return {c: 0.5 for c in meta.columns} | {"mean": 0.5, "rows": float(len(real))}

    real, synth = wine_tables()
    meta = infer_meta(real)
    assert not evaluate(real, synth, meta, ["max_gap", "with_extra"]).empty  # unsplit: no contract to check
    with pytest.raises(TaskFailure, match=r"aggregate 'worst' .* is not the mean") as err:
        evaluate(real, synth, meta, ["max_gap"], part=(0, 2))
    assert err.value.kind == FailureKind.APP_ERROR
    with pytest.raises(TaskFailure, match=r"returned component 'rows'.*fix the metric's `per`/`aggregate`"):
        evaluate(real, synth, meta, ["with_extra"], part=(1, 2))
    with pytest.raises(ValueError, match="per must be one of"):
        scratch_metric("bad_per", higher_is_better=True, per="row")
    with pytest.raises(ValueError, match="aggregate is only meaningful"):
        scratch_metric("bad_agg", higher_is_better=True, aggregate="mean")


def test_bad_parts_and_reduced_tables_are_named():
    real, synth = wine_tables()
    meta = infer_meta(real)
    with pytest.raises(BadInput, match=r"index must be an integer in \[0, 3\)"):
        evaluate(real, synth, meta, ["jsd"], part=(3, 3))
    with pytest.raises(BadInput, match="number of parts must be a positive integer"):
        Part(0, 0)
    cols = list(meta.columns)[:4]  # part 0 of 3 needs the first 5 columns
    with pytest.raises(BadInput, match=r"needs columns \['magnesium'\].*part_columns"):
        evaluate(
            real[cols],
            synth[cols],
            infer_meta(real[cols]),
            ["wasserstein"],
            part=(0, 3),
            table_columns=list(meta.columns),
        )


def test_combine_refuses_a_metric_computed_twice():
    real, synth = wine_tables()
    meta = infer_meta(real)
    part = evaluate(real, synth, meta, ["wasserstein"], part=(0, 2))
    with pytest.raises(BadInput, match=r"wasserstein.*more than once"):
        combine_parts([part, part])
    mixed = evaluate(real, synth, meta, ["wasserstein"], part=(0, 3))
    with pytest.raises(BadInput, match=r"split into \[2, 3\] parts"):
        combine_parts([part, mixed])
    whole = evaluate(real, synth, meta, ["wasserstein", "dcr"])
    rows = ["metric", "component", "value"]
    assert sorted(combine_parts(whole)[rows].itertuples(index=False)) == sorted(
        whole[rows].itertuples(index=False)
    )
    assert set(summary_rows(whole, meta.columns)["component"]) == {
        "mean",
        *whole.query("metric == 'dcr'").component,
    }


def test_metric_options_seed_only_where_taken_and_not_overridden(scratch_metric):
    @scratch_metric("sampled", higher_is_better=True, per="column", aggregate="mean")
    def sampled(real, synth, meta, *, seed: int | None = None, rows: int = 10):
        return {}

    specs = [get_metric("sampled"), get_metric("jsd"), get_metric("dcr")]
    holdout = pd.DataFrame({"x": [1.0]})
    out = metric_options({"jsd": {}}, specs, seed=42, holdout=holdout)
    assert out["sampled"] == {"seed": 42} and out["jsd"] == {} and out["dcr"]["holdout"] is holdout
    assert metric_options({"sampled": {"seed": 1}}, specs, seed=42)["sampled"] == {"seed": 1}


# ---------------------------------------------------------------- end to end, local engine

FNS = '''
import numpy as np
from sklearn.datasets import load_wine

from perfscale.tabular.columns import split_part


def wine(seed):
    rng = np.random.default_rng(seed)
    table = load_wine(as_frame=True).frame
    table["target"] = table["target"].map(lambda t: f"class_{t}")
    table["flag"] = rng.random(len(table)) < 0.3
    table.loc[::11, "ash"] = np.nan
    return table


def noisy(ctx, seed, noise, shuffle):
    """A noisy resample of the real train split; `shuffle` only permutes the same rows."""
    train = split_part(ctx.input("split"), "train")
    rng = np.random.default_rng(seed)
    synth = train.sample(150, replace=True, random_state=seed).reset_index(drop=True)
    numeric = list(train.columns[:13])
    synth[numeric] = synth[numeric] * (1 + rng.normal(0, noise, (len(synth), len(numeric))))
    if shuffle:
        synth = synth.iloc[np.random.default_rng(seed + 1).permutation(len(synth))].reset_index(drop=True)
    return synth.assign(generator=f"noise={noise}" + (",shuffled" if shuffle else ""))
'''

STUDY = """\
name: fanout
seed: 11
stages:
  data:
    kind: function
    params: {callable: "wine_fns.py:wine"}
  split:
    kind: split
    inputs: [data]
    params: {source: data}
  synth:
    kind: function
    inputs: [split]
    params: {callable: "wine_fns.py:noisy"}
    grid:
      product: {noise: [0.1], shuffle: [false, true]}
  evaluate:
    kind: evaluate
    foreach: synth
    inputs: [split]
    params: {source: split, parts: 3, metrics: METRICS}
    grid:
      product: {part: [0, 1, 2]}
  whole:
    kind: evaluate
    foreach: synth
    inputs: [split]
    params: {source: split, metrics: METRICS}
"""

E2E_METRICS = [*COLUMN_METRICS, *PAIR_METRICS, "dcr"]


def run_study(study_dir: Path, run: Path, workers: int):
    (study_dir / "wine_fns.py").write_text(textwrap.dedent(FNS))
    path = study_dir / "fanout.yaml"
    path.write_text(STUDY.replace("METRICS", "[" + ", ".join(E2E_METRICS) + "]"))
    store = prepare_run(path, load_site("local"), run)
    summary = run_plan(store, "local", workers=workers, progress=False)
    assert {s: (v.done, v.failed) for s, v in summary.items()} == {
        "data": (1, 0),
        "split": (1, 0),
        "synth": (2, 0),
        "evaluate": (6, 0),
        "whole": (2, 0),
    }
    return store


@pytest.mark.slow
def test_fanned_out_study_is_identical_across_workers_and_row_orders(study_dir, tmp_path):
    one = run_study(study_dir, tmp_path / "w1", workers=1)
    two = run_study(study_dir, tmp_path / "w2", workers=2)
    keep = ["generator", "evaluation", "metric", "component", "value", "parts"]
    raw = one.read_stage("evaluate", provenance=False).to_pandas()
    combined = combine_parts(raw)[keep]
    pd.testing.assert_frame_equal(combined, combine_parts(two.read_stage("evaluate").to_pandas())[keep])
    assert combined["evaluation"].nunique() == 2 and set(combined["parts"]) == {3}

    # every table metric ran in exactly one part; parts carry no aggregate, the combined table does
    assert raw.query("metric == 'dcr'").groupby("evaluation")["part"].nunique().eq(1).all()
    assert not raw.query("metric == 'column_shapes' and component == 'score'").shape[0]
    assert combined.query("metric == 'column_shapes' and component == 'score'").shape[0] == 2

    whole = combine_parts(one.read_stage("whole", provenance=False).to_pandas())
    for generator, rows in combined.groupby("generator"):
        assert_same_values(whole[whole.generator == generator], rows)
    plain = combined[combined.generator == "noise=0.1"]
    assert_same_values(plain, combined[combined.generator == "noise=0.1,shuffled"])
    page = build_report(one).read_text()
    assert "Synthetic quality: evaluate" in page and "Synthetic quality: whole" in page
    # the report shows the recomputed aggregates of the split stage, not per-column/per-pair components
    assert page.count("<td>score</td>") >= 2 and "alcohol" not in page


def test_part_beyond_parts_fails_at_planning(study_dir, tmp_path):
    path = study_dir / "bad.yaml"
    path.write_text(STUDY.replace("METRICS", "[jsd]").replace("parts: 3, ", ""))
    (study_dir / "wine_fns.py").write_text(textwrap.dedent(FNS))
    with pytest.raises(SpecError, match=r"part 1 is not below parts 1: set params\.parts"):
        prepare_run(path, load_site("local"), tmp_path / "run")


def test_plan_part_deals_block_pairs_round_robin():
    spec = get_metric("wasserstein")
    pair_spec = registry_module.MetricSpec("p", spec.fn, False, "", "pair", ("mean",))
    columns = [f"c{i}" for i in range(7)]
    units = [plan_part([pair_spec], columns, Part(i, 4)) for i in range(4)]
    # k = 4 -> m = 3 blocks (c0-c2, c3-c4, c5-c6), 6 block pairs dealt round-robin: 2, 2, 1, 1 units
    assert [len(u) for u in units] == [2, 2, 1, 1]
    assert units[1][0].columns == ("c0", "c1", "c2", "c3", "c4")
    kept = [name for part in units for unit in part for name in unit.keep]
    assert len(kept) == 2 * math.comb(7, 2) and len(set(kept)) == len(kept)  # both spellings, once each
