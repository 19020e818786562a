"""Relative performance vectors (RPV) across machines, after Nichols, Yeom and Bhatele (docs/relperf.md).

1. **Profiles** (`profile_points`): Caliper tables (perfscale.ingest.caliper: RAJAPerf kernel regions, machine
   `adiak_cluster`) and RAJAPerf CSV tables (perfscale.ingest.rajaperf) become one table of *points*: a
   kernel measured on a *system* (machine and device: `H100_gpu`, `H100_cpu`, `quartz_cpu`, `lassen_gpu`) at
   one problem size, with its time per rep and machine-independent work per rep. Repeated runs of a point
   (the Caliper runs) give their median time; of a point's variants and tunings the fastest with a passing
   checksum is kept (the machine's best, as a user would pick it).
2. **Size matching** (`rpv_table`): sizes differ across machines (MI300A SPX runs twice H100's problem per
   rank, CPX 24 ranks instead of 4, Caliper's Quartz and Lassen runs 1M and 2M), so times are compared per
   element of the node's work: `time_per_element_s` = time per rep / (iterations per rep x MPI ranks). The
   base system's points define the vectors; each other system contributes its point of the same kernel
   whose node work (iterations x ranks) is nearest (in log scale), if within `size_tolerance` times.
3. **Vectors.** `rpv_<s>` = t_s / t_base (Nichols' rpv(., ., s)); `rpvmin_<s>` = t_s / min t (rpv(., ., min),
   >= 1); `speed_<s>` = min t / t_s, in (0, 1] (1 on the fastest system): the bounded form the models
   predict and MAE is computed on.
4. **Rows** (Nichols' set-up): one row per vector x *profiled* system: features from that system's own point
   (its log work per rep, flops per byte, its log time per element) and the system one-hot (`on_<s>`); the
   targets are the whole vector (multi-output).

No counters are in these profiles (neither file set has PAPI data), so the features are the work per rep
and the profiled time, not counter ratios.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from perfscale.errors import BadInput

log = logging.getLogger(__name__)

POINT_COLUMNS = ["kernel", "system", "work", "time_per_rep_s", "time_per_element_s", "bytes_per_rep",
                 "flops_per_rep", "iterations_per_rep"]  # fmt: skip
FEATURES = ["log_work", "log_bytes_per_rep", "log_flops_per_rep", "flops_per_byte", "log_time_per_element"]


@dataclass
class Dropped:
    """What was dropped and why: not errors (docs/relperf.md), counted in the log and the stage's summary."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int) -> None:
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + int(n)

    def log(self) -> None:
        for reason, n in self.counts.items():
            log.info("relperf: dropped %d %s", n, reason)


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BadInput(f"relperf: {what} lacks columns {missing}; columns: {sorted(table.columns)}")


def caliper_points(table: pd.DataFrame) -> pd.DataFrame:
    """Kernel regions of Caliper RAJAPerf profiles (rows with `reps` and `iterations_per_rep`)."""
    _require(table, ["region", "adiak_cluster", "adiak_variant", "reps", "iterations_per_rep",
                     "time_inclusive_avg_s"], "a Caliper table")  # fmt: skip
    rows = table[table["reps"].notna() & table["iterations_per_rep"].notna() & (table["reps"] > 0)]
    rows = rows[rows["region"].str.contains("_", na=False)]  # kernels (Apps_ENERGY), not groups (Apps)
    device = np.where(rows["adiak_variant"].str.contains("CUDA|HIP|SYCL", na=False), "gpu", "cpu")
    return pd.DataFrame(
        {
            "kernel": rows["region"].to_numpy(),
            "machine": rows["adiak_cluster"].to_numpy(),
            "device": device,
            "variant": (rows["adiak_variant"] + "/" + rows.get("adiak_tuning", "")).to_numpy(),
            "size": rows["problem_size"].to_numpy(np.float64),
            "ranks": 1.0,  # RAJAPerf's Caliper runs here are one rank (docs/ingest-caliper.md)
            "time_per_rep_s": (rows["time_inclusive_avg_s"] / rows["reps"]).to_numpy(np.float64),
            "bytes_per_rep": rows["bytes_per_rep"].to_numpy(np.float64),
            "flops_per_rep": rows["flops_per_rep"].to_numpy(np.float64),
            "iterations_per_rep": rows["iterations_per_rep"].to_numpy(np.float64),
            "passed": True,
        }
    )


def rajaperf_points(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of perfscale.ingest.rajaperf tables."""
    need = ["kernel", "machine", "device", "variant", "tuning", "problem_size", "time_per_rep_s",
            "iterations_per_rep", "bytes_moved_per_rep", "flops_per_rep"]  # fmt: skip
    _require(table, need, "a RAJAPerf table")
    ranks = table["mpi_ranks"] if "mpi_ranks" in table else pd.Series(1.0, index=table.index)
    return pd.DataFrame(
        {
            "kernel": table["kernel"].to_numpy(),
            "machine": table["machine"].to_numpy(),
            "device": table["device"].to_numpy(),
            "variant": (table["variant"] + "/" + table["tuning"]).to_numpy(),
            "size": table["problem_size"].to_numpy(np.float64),
            "ranks": ranks.astype("float64").fillna(1.0).to_numpy(),
            "time_per_rep_s": table["time_per_rep_s"].to_numpy(np.float64),
            "bytes_per_rep": table["bytes_moved_per_rep"].to_numpy(np.float64),
            "flops_per_rep": table["flops_per_rep"].to_numpy(np.float64),
            "iterations_per_rep": table["iterations_per_rep"].to_numpy(np.float64),
            "passed": (table["checksum"] != "FAILED").to_numpy() if "checksum" in table else True,
        }
    )


def as_points(table: pd.DataFrame) -> pd.DataFrame:
    """Either importer's table as points (one row per measurement), told apart by their columns."""
    if "region_path" in table.columns:
        return caliper_points(table)
    if "time_per_rep_s" in table.columns:
        return rajaperf_points(table)
    raise BadInput(
        "relperf: an input is neither a Caliper table (region_path, adiak_cluster...) nor a RAJAPerf one "
        f"(kernel, machine, time_per_rep_s...); columns: {sorted(table.columns)}"
    )


def profile_points(tables: Sequence[pd.DataFrame], dropped: Dropped) -> pd.DataFrame:
    """One row per kernel x system x size: the fastest passing variant, median time over repeated runs."""
    raw = pd.concat([as_points(t) for t in tables], ignore_index=True)
    raw["system"] = raw["machine"].astype(str) + "_" + raw["device"].astype(str)
    dropped.add("measurements with a failed checksum", (~raw["passed"]).sum())
    raw = raw[raw["passed"]]
    numbers = ["time_per_rep_s", "iterations_per_rep", "size"]
    bad = (
        ~np.isfinite(raw[numbers].to_numpy(np.float64)).all(axis=1)
        | (raw["time_per_rep_s"] <= 0)
        | (raw["iterations_per_rep"] <= 0)
    )
    dropped.add("measurements with a missing or non-positive time or work", bad.sum())
    raw = raw[~bad]
    keys = ["kernel", "system", "size", "ranks", "variant"]
    runs = raw.groupby(keys, as_index=False).agg(
        time_per_rep_s=("time_per_rep_s", "median"),
        bytes_per_rep=("bytes_per_rep", "first"),
        flops_per_rep=("flops_per_rep", "first"),
        iterations_per_rep=("iterations_per_rep", "first"),
    )
    best = runs.loc[runs.groupby(["kernel", "system", "size", "ranks"])["time_per_rep_s"].idxmin()]
    best = best.assign(work=best["iterations_per_rep"] * best["ranks"])
    best["time_per_element_s"] = best["time_per_rep_s"] / best["work"]
    return best[[*POINT_COLUMNS, "variant"]].sort_values(["kernel", "system", "work"]).reset_index(drop=True)


def rpv_table(
    points: pd.DataFrame,
    base: str,
    systems: Sequence[str] | None = None,
    size_tolerance: float = 2.0,
    dropped: Dropped | None = None,
) -> pd.DataFrame:
    """One row per vector x profiled system (module docstring): features, `on_<s>`, and the targets."""
    dropped = dropped or Dropped()
    known = sorted(points["system"].unique())
    systems = sorted(systems) if systems else known
    unknown = [s for s in [*systems, base] if s not in known]
    if unknown:
        raise BadInput(f"relperf: systems {unknown} have no profiles; systems measured: {known}")
    if base not in systems:
        raise BadInput(f"relperf: base {base!r} is not among the systems {systems}")
    if len(systems) < 2:
        raise BadInput(f"relperf: a vector needs two or more systems; got {systems}")
    points = points[points["system"].isin(systems)]
    kernels = points.groupby("kernel")["system"].nunique()
    dropped.add("kernels measured on one system only", (kernels < 2).sum())
    common = set(points.loc[points["system"] == base, "kernel"])
    for s in systems:
        common &= set(points.loc[points["system"] == s, "kernel"])
    if not common:
        raise BadInput(
            f"relperf: systems {systems} have no kernel in common; drop a system from `systems` or add "
            "profiles (kernels per system: "
            + ", ".join(f"{s} {points.loc[points.system == s, 'kernel'].nunique()}" for s in systems)
            + ")"
        )
    partial = (kernels >= 2) & ~kernels.index.isin(common)
    dropped.add("kernels measured on some systems but not all", partial.sum())
    by = {key: part for key, part in points.groupby(["kernel", "system"])}
    vectors = []
    for kernel in sorted(common):
        for _, b in by[(kernel, base)].iterrows():
            members = {}
            for s in systems:
                cand = by[(kernel, s)]
                gap = np.abs(np.log(cand["work"].to_numpy() / b["work"]))
                i = int(np.argmin(gap))
                if gap[i] > np.log(size_tolerance):
                    break
                members[s] = cand.iloc[i]
            else:
                vectors.append((kernel, b["work"], members))
                continue
            dropped.add("base sizes with no size within size_tolerance on every system", 1)
    if not vectors:
        raise BadInput(
            f"relperf: no size of the base {base!r} has a size within {size_tolerance}x on every system "
            f"{systems}; raise size_tolerance or drop systems"
        )
    rows = []
    for n, (kernel, work, members) in enumerate(vectors):
        t = np.array([members[s]["time_per_element_s"] for s in systems])
        vector = {
            **{f"rpv_{s}": t[j] / t[systems.index(base)] for j, s in enumerate(systems)},
            **{f"rpvmin_{s}": t[j] / t.min() for j, s in enumerate(systems)},
            **{f"speed_{s}": t.min() / t[j] for j, s in enumerate(systems)},
            "fastest": systems[int(t.argmin())],
        }
        for p in systems:
            m = members[p]
            rows.append(
                {
                    "vector": n,
                    "kernel": kernel,
                    "kernel_group": kernel.split("_", 1)[0],
                    "base_work": work,
                    "profiled_on": p,
                    "variant": m["variant"],
                    "log_work": np.log10(m["work"]),
                    "log_bytes_per_rep": np.log10(max(m["bytes_per_rep"], 1.0)),
                    "log_flops_per_rep": np.log10(max(m["flops_per_rep"], 1.0)),
                    "flops_per_byte": m["flops_per_rep"] / max(m["bytes_per_rep"], 1.0),
                    "log_time_per_element": np.log10(m["time_per_element_s"]),
                    **{f"on_{s}": float(s == p) for s in systems},
                    **vector,
                }
            )
    table = pd.DataFrame(rows)
    nan = [c for c in FEATURES if table[c].isna().any()]
    if nan:
        raise BadInput(f"relperf: features {nan} have NaN (a profile lacks bytes or flops per rep)")
    return table


def same_order_score(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Share of rows whose predicted vector orders the systems exactly as the true one does (Nichols' SOS).
    Ties in the truth count as ordered either way."""
    truth, prediction = np.atleast_2d(truth), np.atleast_2d(prediction)
    order = np.argsort(prediction, axis=1, kind="stable")
    ranked_truth = np.take_along_axis(truth, order, axis=1)
    return float(np.mean(np.all(np.diff(ranked_truth, axis=1) >= 0, axis=1)))
