"""Several metric studies (one per real table) side by side: which metric, or which variant of a metric,
ranks synthetic sets the way ML efficacy does on most tables?

`summarise` takes the result tables of `metric_study` stages (perfscale.results.metric_study), one per table,
and returns one row per metric (variants included, e.g. ``dissimilarity[dcr/var0.9/normalised/projected/
product]``): its rho on each table, the mean rho, and its rank on each table among every row of that table
(1 = highest rho; a row without rho on a table ranks last there), the mean rank and the worst rank. Rows are
sorted by mean rank: the first is the evidence-based choice (docs/metrics.md, *dissimilarity*, uses it to pick
the metric's default).

`option_effects` splits variant names (``scaling/d*/weights/kl/combination``) into their options and gives,
for each option value, the mean rho and mean rank of the variants that use it: which choice matters.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from perfscale.results.metric_study import base_metric

VARIANT_OPTIONS = ("scaling", "d_star", "weights", "kl", "combination")


def summarise(results: Mapping[str, pd.DataFrame], against: str = "sdmetrics_quality") -> pd.DataFrame:
    """One row per metric over the tables: rho:<table>, rank:<table>, mean_rho, mean_rank, worst_rank, and
    beats:<against> (on how many tables its rho is above `against`'s)."""
    wide = pd.DataFrame({t: r.set_index("metric")["spearman_rho"] for t, r in results.items()})
    ranks = wide.rank(ascending=False, method="average", na_option="bottom")
    out = pd.DataFrame(index=wide.index)
    out["base"] = [base_metric(m) for m in wide.index]
    out["mean_rho"] = wide.mean(axis=1)
    out["mean_rank"] = ranks.mean(axis=1)
    out["worst_rank"] = ranks.max(axis=1)
    if against in wide.index:
        out[f"beats:{against}"] = (wide.sub(wide.loc[against], axis=1) > 0).sum(axis=1)
    for table in wide:
        out[f"rho:{table}"] = wide[table]
    for table in wide:
        out[f"rank:{table}"] = ranks[table]
    out = out.sort_values(["mean_rank", "mean_rho"], ascending=[True, False], kind="stable")
    return out.rename_axis("metric").reset_index()


def option_effects(summary: pd.DataFrame, metric: str = "dissimilarity") -> pd.DataFrame:
    """Per option and value of `metric`'s variants: n variants, mean rho and mean rank (over all tables)."""
    prefix = f"{metric}["
    variants = summary[summary["metric"].str.startswith(prefix)]
    if variants.empty:
        return pd.DataFrame(columns=["option", "value", "variants", "mean_rho", "mean_rank"])
    parts = variants["metric"].str[len(prefix) : -1].str.split("/", expand=True)
    parts.columns = list(VARIANT_OPTIONS)
    frames = []
    for option in VARIANT_OPTIONS:
        grouped = variants.groupby(parts[option].to_numpy())
        frame = grouped.agg(
            variants=("metric", "size"), mean_rho=("mean_rho", "mean"), mean_rank=("mean_rank", "mean")
        )
        frames.append(frame.rename_axis("value").reset_index().assign(option=option))
    columns = ["option", "value", "variants", "mean_rho", "mean_rank"]
    return pd.concat(frames, ignore_index=True)[columns].sort_values(["option", "mean_rank"], kind="stable")


def held_out_choice(
    results: Mapping[str, pd.DataFrame], metric: str = "dissimilarity", against: str = "sdmetrics_quality"
) -> pd.DataFrame:
    """Leave one table out: the variant of `metric` with the best mean rank on the other tables, and how it
    does on the table left out (rho, rank there) beside `against`. Choosing the best of hundreds of variants
    on the same tables flatters it; this says how well the choice carries to a table it was not chosen on."""
    rows = []
    for table in results:
        others = summarise({t: r for t, r in results.items() if t != table})
        variants = others[others["metric"].str.startswith(f"{metric}[")]
        if variants.empty:
            continue
        chosen = str(variants["metric"].iloc[0])
        here = summarise({table: results[table]}).set_index("metric")
        rows.append(
            {
                "held_out": table,
                "chosen_on_others": chosen,
                "rho": here.loc[chosen, f"rho:{table}"],
                "rank": here.loc[chosen, f"rank:{table}"],
                f"rho:{against}": here.loc[against, f"rho:{table}"]
                if against in here.index
                else float("nan"),
                f"rank:{against}": here.loc[against, f"rank:{table}"]
                if against in here.index
                else float("nan"),
                "rows": len(here),
            }
        )
    return pd.DataFrame(rows)
