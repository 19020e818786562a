"""workflows/endstate.yaml with a sacct source: Slurm's end states (COMPLETED, FAILED, CANCELLED, TIMEOUT,
OUT_OF_MEMORY, NODE_FAIL) through the same ingest -> fit_predict -> report as the Mira trace.

Three sources: the real sacct output of tests/data/sacct (captured on a one-node Slurm; its rarer classes
have one job each, which is refused with the classes named), real sacct output of a 33-job mixed workload
on the localhost Slurm (tests/data/sacct-endstate: four classes), and a 300-job export
written here line by line in sacct's documented `--parsable2 --noconvert` format (SACCT_FIELDS, UTC
times), whose end states depend on the user, the requested walltime and memory, as they do on real clusters.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from perfscale.errors import BadInput
from perfscale.execute import execute_task
from perfscale.ingest.sacct import SACCT_FIELDS
from perfscale.models.fit import FitSpec, fit_predict
from perfscale.report import build_report
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(__file__).parent / "data" / "sacct"
CLASSES = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"]
EXIT = {"COMPLETED": "0:0", "FAILED": "1:0", "CANCELLED": "0:15", "TIMEOUT": "0:0", "OUT_OF_MEMORY": "0:125",
        "NODE_FAIL": "0:0", "RUNNING": "0:0", "PENDING": "0:0"}  # fmt: skip


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def sacct_export(n: int, seed: int) -> str:
    """n jobs as `sacct --parsable2 --noconvert --allocations --format=<SACCT_FIELDS>` prints them in UTC,
    and two more still RUNNING and PENDING at the time of the export (no end state yet)."""
    rng = np.random.default_rng(seed)
    users = {"ana": ("chem", 0.05), "bo": ("chem", 0.35), "cy": ("phys", 0.10), "di": ("phys", 0.20)}
    t0 = datetime(2026, 11, 2, tzinfo=UTC)
    lines = ["|".join(SACCT_FIELDS)]
    submit = t0
    for job in range(1, n + 3):
        user = list(users)[job % 4]
        account, fail_rate = users[user]
        submit += timedelta(seconds=int(rng.exponential(600)))
        nodes = int(rng.choice([1, 1, 2, 4, 8]))
        cpus = nodes * int(rng.choice([1, 8, 36]))
        limit_min = int(rng.choice([10, 30, 60, 240]))
        mem_mb = int(rng.choice([512, 4096, 32768]))
        u = rng.random()
        if job > n:
            state = "RUNNING" if job == n + 1 else "PENDING"
        elif u < 0.03:
            state = "NODE_FAIL"
        elif u < 0.03 + fail_rate:
            state = "FAILED"
        elif mem_mb == 512 and u < 0.5:
            state = "OUT_OF_MEMORY"
        elif limit_min == 10 and u < 0.8:
            state = "TIMEOUT"
        elif user == "di" and u > 0.85:
            state = "CANCELLED"
        else:
            state = "COMPLETED"
        start = submit + timedelta(seconds=int(rng.exponential(120)))
        run = limit_min * 60 + 30 if state == "TIMEOUT" else int(rng.uniform(0.05, 0.9) * limit_min * 60)
        end = start + timedelta(seconds=run)
        stamp = "%Y-%m-%dT%H:%M:%S"
        ended = state not in ("RUNNING", "PENDING")
        fields = {
            "JobID": str(job), "JobIDRaw": str(job), "JobName": f"run{job % 7}", "User": user,
            "Account": account, "Partition": "batch", "QOS": "normal",
            "State": "CANCELLED by 1001" if state == "CANCELLED" else state, "ExitCode": EXIT[state],
            "DerivedExitCode": "0:0", "Submit": submit.strftime(stamp), "Eligible": submit.strftime(stamp),
            "Start": start.strftime(stamp) if state != "PENDING" else "Unknown",
            "End": end.strftime(stamp) if ended else "Unknown",
            "Elapsed": _clock(run if ended else 0), "ElapsedRaw": str(run if ended else 0),
            "Timelimit": _clock(limit_min * 60), "TimelimitRaw": str(limit_min), "ReqCPUS": str(cpus),
            "AllocCPUS": str(cpus), "ReqNodes": str(nodes), "AllocNodes": str(nodes), "ReqMem": f"{mem_mb}M",
            "NodeList": f"node[1-{nodes}]" if nodes > 1 else "node1",
            "ReqTRES": f"billing={cpus},cpu={cpus},mem={mem_mb}M,node={nodes}",
            "AllocTRES": f"billing={cpus},cpu={cpus},mem={mem_mb}M,node={nodes}", "Reason": "None",
            "Cluster": "testcluster",
        }  # fmt: skip
        lines.append("|".join(fields.get(name, "") for name in SACCT_FIELDS))
    return "\n".join(lines) + "\n"


def sacct_study(tmp_path: Path, source: Path, models: list[str]) -> Path:
    """workflows/endstate.yaml with the sacct changes its header names (only the source and columns)."""
    study = yaml.safe_load((ROOT / "workflows" / "endstate.yaml").read_text())
    study["stages"]["trace"]["params"] = {"kind": "sacct", "source": str(source)}
    fit = study["stages"]["fit"]
    fit["params"] |= {
        "targets": ["state"],
        "features": ["req_nodes", "req_cpus", "timelimit_s", "req_mem_bytes"],
        "time_column": "submit",
        "history_by": ["user_hash", "account"],
        "history_outcome": "state",
        "end_columns": ["end"],
        "classes": CLASSES,
    }
    fit["grid"] = {
        "product": {"model": models, "split": ["random", "time"], "resample": ["none", "smotetomek"]},
        "exclude": [{"model": "mean", "resample": "smotetomek"}],
    }
    path = tmp_path / "endstate-sacct.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_endstate_workflow_on_a_sacct_export(tmp_path: Path) -> None:
    """Six sacct classes through the end-state workflow: every model x split x resampling tested, per-class F1
    and the confusion matrix of all six, XGBoost above the majority baseline, ROC curves in the report."""
    export = tmp_path / "export.sacct"
    export.write_text(sacct_export(300, seed=11))
    store = prepare_run(
        sacct_study(tmp_path, export, ["mean", "xgboost"]), load_site("local"), tmp_path / "r"
    )
    summary = run_plan(store, "local", workers=2, progress=False)
    assert {s: (v.done, v.failed) for s, v in summary.items()} == {"trace": (1, 0), "fit": (6, 0)}
    out = store.read_stage("fit", provenance=False).to_pandas()
    assert set(out["truth_label"]) == set(CLASSES)  # RUNNING and PENDING dropped
    assert {f"f1_{c}" for c in CLASSES} | {f"prob_{c}" for c in CLASSES} <= set(out.columns)
    for _, part in out.groupby(["model", "split", "resample"]):
        confusion = yaml.safe_load(part["confusion"].iloc[0])
        assert sorted(confusion["classes"]) == sorted(CLASSES)
        assert np.asarray(confusion["matrix"]).sum() == len(part) == part["test_rows"].iloc[0] == 75
    auc = out.groupby(["model", "split", "resample"])["auc_macro"].first()
    assert (auc.loc["mean"] == 0.5).all() and (auc.loc["xgboost"] > 0.7).all(), auc
    assert "account_prior_TIMEOUT" in out["features"].iloc[0] and "req_mem_bytes" in out["features"].iloc[0]
    page = build_report(store).read_text()
    assert "Model predictions: fit" in page and "f1_OUT_OF_MEMORY" in page and "NODE_FAIL" in page
    assert "section not drawn" not in page and page.count("data:image/png") >= 1


def test_real_sacct_output_names_its_one_job_classes(tmp_path: Path) -> None:
    """The real captured sacct output: REQUEUED records are dropped by `classes`, and TIMEOUT,
    OUT_OF_MEMORY and NODE_FAIL, one job each, are refused with their counts."""
    source = tmp_path / "sacct"
    source.mkdir()
    for name in ("cluster-jobs-allocations.txt", "cgroup-oom-nodefail-requeue.txt"):
        shutil.copy(REAL / name, source / name)
    study = sacct_study(tmp_path, source, ["mean"])
    text = yaml.safe_load(study.read_text())
    text["stages"]["fit"]["params"]["nan"] = "drop"  # job 1's Timelimit is UNLIMITED
    study.write_text(yaml.safe_dump(text, sort_keys=False))
    store = prepare_run(study, load_site("local"), tmp_path / "r")
    outcomes = {task.stage: execute_task(store.root, task.index) for task in store.plan.tasks}
    assert outcomes["trace"].ok and not outcomes["fit"].ok
    message = outcomes["fit"].message
    assert "have fewer than 2 rows" in message
    for name in ("TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
        assert f"'{name}': 1" in message
    table = store.read_stage("trace", provenance=False).to_pandas()
    params = {k: v for k, v in text["stages"]["fit"]["params"].items() if k != "source"}
    spec = FitSpec(**{**params, "classes": ["COMPLETED", "BOOT_FAIL"]}, model="mean")
    with pytest.raises(BadInput, match=r"classes \['BOOT_FAIL'\] do not occur in 'state'"):
        fit_predict(table, spec, 0)
    numeric = FitSpec(**{**params, "targets": ["elapsed_s"], "classes": ["1", "2"]}, model="mean",
                      allow_post_submit_features=True)  # fmt: skip
    with pytest.raises(BadInput, match=r"targets \['elapsed_s'\] are not one class column"):
        fit_predict(table, numeric, 0)


def test_endstate_workflow_on_real_local_slurm_output(tmp_path: Path) -> None:
    """Real sacct output of 33 jobs on the localhost Slurm (tests/data/sacct-endstate: COMPLETED, FAILED,
    TIMEOUT, CANCELLED) through the same workflow: every model x split x resampling runs on it."""
    source = Path(__file__).parent / "data" / "sacct-endstate" / "endstate-mixed-allocations.txt"
    study = sacct_study(tmp_path, source, ["mean", "xgboost"])
    text = yaml.safe_load(study.read_text())
    four = ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"]
    text["stages"]["fit"]["params"]["classes"] = four
    study.write_text(yaml.safe_dump(text, sort_keys=False))
    store = prepare_run(study, load_site("local"), tmp_path / "r")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert {s: (v.done, v.failed) for s, v in summary.items()} == {"trace": (1, 0), "fit": (6, 0)}
    out = store.read_stage("fit", provenance=False).to_pandas()
    for (_, split, _), part in out.groupby(["model", "split", "resample"]):
        assert set(part["truth_label"]) == set(four), split  # each split tests every class
        assert len(part) == 9 and (part["train_rows"] == 24).all()
    auc = out.groupby(["model", "split", "resample"])["auc_macro"].first()
    # each kind of job asked for its own walltime and memory, so the classes are separable: a check that the
    # features reach the model, not a measure of skill
    assert (auc.loc["mean"] == 0.5).all() and (auc.loc["xgboost"] > 0.9).all(), auc
