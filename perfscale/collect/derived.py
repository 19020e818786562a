"""Features derived from counter columns, after Nichols et al.'s cross-architecture performance study: the
instruction mix as intensities (each kind of instruction over all instructions), cache miss ratios and IPC.
Such ratios carry over between machines and problem sizes better than raw counts do.

Each feature is a ratio of two counter columns, from the first source that gives one: PAPI first, then
perf (a ratio never mixes sources). A source gives none when an input is missing, null, NaN or infinite or
the denominator is zero; with no source left the feature is null: never inf or NaN. PAPI counts of
one ratio may come from different runs of the command when the events were split into groups.

| feature | PAPI | perf |
|---|---|---|
| ipc | TOT_INS / TOT_CYC | instructions / cycles |
| branch_intensity | BR_INS / TOT_INS | branches (or branch-instructions) / instructions |
| load_intensity | LD_INS / TOT_INS | - |
| store_intensity | SR_INS / TOT_INS | - |
| sp_fp_intensity | SP_OPS / TOT_INS | - |
| dp_fp_intensity | DP_OPS / TOT_INS | - |
| int_intensity | INT_INS / TOT_INS | - |
| l1_dcache_miss_ratio | L1_DCM / L1_DCA | L1-dcache-load-misses / L1-dcache-loads |
| llc_miss_ratio | L3_TCM / L3_TCA | LLC-load-misses / LLC-loads, else cache-misses / cache-references |

SP_OPS and DP_OPS count floating-point operations (a vector instruction counts once per lane), so the two
FP intensities are operations per instruction; perf's generic events have no load, store or FP counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: feature -> (numerator column, denominator column) per source, in the order tried
RECIPES: dict[str, tuple[tuple[str, str], ...]] = {
    "ipc": (("papi_tot_ins", "papi_tot_cyc"), ("perf_instructions", "perf_cycles")),
    "branch_intensity": (
        ("papi_br_ins", "papi_tot_ins"),
        ("perf_branches", "perf_instructions"),
        ("perf_branch_instructions", "perf_instructions"),
    ),
    "load_intensity": (("papi_ld_ins", "papi_tot_ins"),),
    "store_intensity": (("papi_sr_ins", "papi_tot_ins"),),
    "sp_fp_intensity": (("papi_sp_ops", "papi_tot_ins"),),
    "dp_fp_intensity": (("papi_dp_ops", "papi_tot_ins"),),
    "int_intensity": (("papi_int_ins", "papi_tot_ins"),),
    "l1_dcache_miss_ratio": (
        ("papi_l1_dcm", "papi_l1_dca"),
        ("perf_l1_dcache_load_misses", "perf_l1_dcache_loads"),
    ),
    "llc_miss_ratio": (
        ("papi_l3_tcm", "papi_l3_tca"),
        ("perf_llc_load_misses", "perf_llc_loads"),
        ("perf_cache_misses", "perf_cache_references"),
    ),
}
DERIVED_COLUMNS = tuple(RECIPES)


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def ratio(numerator: Any, denominator: Any) -> float | None:
    """numerator / denominator as a float; None when either is missing or not finite, or the denominator
    is zero."""
    num, den = _finite(numerator), _finite(denominator)
    if num is None or den is None or den == 0.0:
        return None
    return num / den


def _feature(row: Mapping[str, Any], recipes: tuple[tuple[str, str], ...]) -> float | None:
    for num, den in recipes:
        value = ratio(row.get(num), row.get(den))
        if value is not None:
            return value
    return None


def derive(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Every feature of DERIVED_COLUMNS for one row of counter columns (null where it cannot be computed)."""
    return {name: _feature(row, recipes) for name, recipes in RECIPES.items()}
