"""Features known at submit time, for job end-state and runtime predictors (docs/models.md).

* **Post-submit columns.** A job's run time, wait, exit code, end time (and anything computed from them,
  such as Mira's `node_hour` = nodes x run time) are known only after the job. `check_submit_time` refuses
  them as model inputs with `PostSubmitFeature`, unless a study says `allow_post_submit_features: true`.
* **Calendar features** of the submit time (UTC): hour, day of week, day of month.
* **History features** of the same user or project, from earlier jobs only, in a strict time order:
  `<by>_prior_jobs` counts that group's jobs submitted strictly before this one (ties excluded: a job
  submitted in the same second is not "earlier"); `<by>_prior_ended` counts those that had *ended* strictly
  before this submit, and `<by>_prior_<class>` is the share of each end state among them, Laplace-smoothed
  ((count + 1) / (ended + classes): no NaN for a group's first job). Outcomes are counted by end time,
  not submit time: a job submitted earlier that is still queued or running has no outcome yet, and using
  it would look into the future. An outcome history without end times is refused (`FutureHistory`).
* **NaN rule.** A feature column with NaN is refused (`nan: error`, naming the columns and counts), or its
  rows are dropped and counted (`nan: drop`). Nothing is imputed silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from perfscale.errors import BadInput

#: columns known only once a job has ended: sacct and Mira/Cobalt spellings
POST_SUBMIT_COLUMNS = frozenset(
    {
        "run_time", "runtime", "elapsed", "elapsed_s", "duration_s", "wait_time", "wait_s", "queue_time",
        "state", "exit_code", "exitcode", "status", "new_status", "end_time", "end", "start_time", "start",
        "node_hour", "node_hours", "cpu_time", "total_cpu", "max_rss", "consumed_energy", "derived_exit_code",
        # sacct (perfscale.ingest.sacct): what the job used or got, and why it ended
        "queue_wait_s", "exit_signal", "derived_exit_signal", "cancelled_by", "reason", "alloc_cpus",
        "alloc_nodes", "alloc_mem_bytes", "alloc_gpus", "alloc_tres", "nodelist", "max_rss_bytes",
        "ave_rss_bytes", "max_vmsize_bytes", "ave_cpu_s", "total_cpu_s", "user_cpu_s", "system_cpu_s",
        "cpu_time_s", "n_steps",
    }
)  # fmt: skip


class PostSubmitFeature(BadInput, ValueError):
    """A model input that is known only after the job ends."""


class FutureHistory(BadInput, ValueError):
    """A history feature that would see later jobs or outcomes not yet known at submit time."""


def post_submit_features(features: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    known = POST_SUBMIT_COLUMNS | {c.lower() for c in extra}
    return [f for f in features if f.lower() in known]


def check_submit_time(features: Sequence[str], allow: bool, extra: Sequence[str] = ()) -> None:
    bad = post_submit_features(features, extra)
    if bad and not allow:
        raise PostSubmitFeature(
            f"features {bad} are known only after a job ends (run time, wait, exit code, end time); "
            "remove them, or set allow_post_submit_features: true to study what they would add"
        )


CALENDAR = ("submit_hour", "submit_day_of_week", "submit_day_of_month")


def unix_seconds(column: pd.Series) -> np.ndarray:
    """Times as float Unix seconds: numbers as they are (Mira), timestamps converted (sacct); NaT -> NaN."""
    if pd.api.types.is_datetime64_any_dtype(column):
        t = pd.to_datetime(column, utc=True)
        return np.where(t.isna(), np.nan, (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds())
    return column.to_numpy(np.float64)


def calendar_features(times: pd.Series) -> pd.DataFrame:
    """Hour, day of week (Monday 0) and day of month of submit times (Unix seconds or timestamps), in UTC."""
    t = pd.to_datetime(unix_seconds(times), unit="s", utc=True)
    return pd.DataFrame(
        {CALENDAR[0]: t.hour, CALENDAR[1]: t.dayofweek, CALENDAR[2]: t.day}, index=times.index
    ).astype(np.float64)


def history_features(
    table: pd.DataFrame,
    by: Sequence[str],
    time_column: str,
    end_columns: Sequence[str] | None = None,
    outcome: str | None = None,
    classes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """History features of each row's group (see the module docstring), in the table's row order.

    `end_columns` are summed into the end time (Mira: submit_time + wait_time + run_time; sacct: end).
    Times are Unix seconds or timestamps.
    """
    for c in [*by, time_column, *(end_columns or ()), *([outcome] if outcome else [])]:
        if c not in table.columns:
            raise BadInput(
                f"history features: column {c!r} is not in the table; columns: {list(table.columns)}"
            )
    submit = unix_seconds(table[time_column])
    if not np.isfinite(submit).all():
        raise FutureHistory(f"history features: {time_column!r} has missing times, so 'earlier' is undefined")
    end = None
    if outcome is not None:
        if not end_columns:
            raise FutureHistory(
                f"history of {outcome!r} needs end_columns (when each job ended): counting outcomes by "
                "submit time would let a job see the end state of earlier jobs still queued or running"
            )
        end = np.sum([unix_seconds(table[c]) for c in end_columns], axis=0)
        if not np.isfinite(end).all() or (end < submit).any():
            raise FutureHistory(
                f"history of {outcome!r}: end time ({' + '.join(end_columns)}) is missing or before the "
                "submit time in some rows; fix or drop them"
            )
        labels = table[outcome].astype(str).to_numpy()
        classes = sorted(set(labels)) if classes is None else list(classes)
    out: dict[str, np.ndarray] = {}
    for group_column in by:
        groups = table[group_column].astype(str).to_numpy()
        prior = np.zeros(len(table))
        ended = np.zeros(len(table))
        shares = {c: np.zeros(len(table)) for c in classes or ()}
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            s = submit[rows]
            prior[rows] = np.searchsorted(np.sort(s), s, side="left")  # strictly earlier submits
            if end is None:
                continue
            order = np.argsort(end[rows], kind="stable")
            ends = end[rows][order]
            n_ended = np.searchsorted(ends, s, side="left")  # ended strictly before this submit
            ended[rows] = n_ended
            for c in classes or ():
                cum = np.concatenate([[0], np.cumsum(labels[rows][order] == c)])
                shares[c][rows] = (cum[n_ended] + 1) / (n_ended + len(classes or ()))
        out[f"{group_column}_prior_jobs"] = prior
        if end is not None:
            out[f"{group_column}_prior_ended"] = ended
            for c in classes or ():
                out[f"{group_column}_prior_{c}"] = shares[c]
    return pd.DataFrame(out, index=table.index)


def apply_nan_rule(table: pd.DataFrame, features: Sequence[str], rule: str) -> tuple[pd.DataFrame, int]:
    """(table, rows dropped) under the NaN rule `error` or `drop` (see the module docstring)."""
    numeric = table[list(features)].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(numeric.to_numpy(np.float64))
    if not bad.any():
        return table, 0
    if rule == "drop":
        keep = ~bad.any(axis=1)
        return table[keep], int((~keep).sum())
    counts = {c: int(n) for c, n in zip(features, bad.sum(axis=0), strict=True) if n}
    raise BadInput(
        f"feature columns hold NaN, infinite or non-numeric values {counts}; fill them upstream or set "
        "nan: drop to drop those rows"
    )


def check_classes(labels: pd.Series, target: str, minimum: int = 2) -> None:
    """Refuse a target whose rarest class has fewer than `minimum` rows (it cannot be on both sides of a
    stratified split, nor have a neighbour to resample from)."""
    counts = labels.astype(str).value_counts()
    if len(counts) < 2:
        raise BadInput(f"target {target!r} has {len(counts)} class {list(counts.index)}; need two or more")
    small = {str(k): int(v) for k, v in counts[counts < minimum].items()}
    if small:
        raise BadInput(
            f"target {target!r}: classes {small} have fewer than {minimum} rows; drop or merge them"
        )
