"""The `simulate` stage: model-based scheduling (perfscale.models.schedsim, docs/relperf.md). Jobs are sampled
with replacement from a `fit_predict` stage's tested rows of relative performance (`truth_speed_<machine>`,
`pred_speed_<machine>` of one model and split), placed by the predicted speed, the true speed or at random,
and run by FCFS + EASY backfilling on each machine. One row per placement policy: makespan, mean wait, and
each machine's node count (`nodes_<machine>`).

**Node counts** come from the site files: system `quartz_cpu` is machine `quartz` (the name before the last
`_`), whose site file (site_configs/quartz.yaml, or one on $PERFSCALE_SITE_PATH) gives `nodes`; `sites` maps
a system to another site name. Only a system with no site file takes its count from `nodes`; one that has a
site file and is also in `nodes` is refused (one source per count). Resolved at plan time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from pydantic import Field, model_validator

from perfscale.stages.base import StageContext, StageParams, stage_kind

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck


class SimulateParams(StageParams):
    source: str = Field(description="a fit_predict stage of speed_<machine> targets, listed in `inputs`")
    model: str = Field(description="whose predictions place the jobs (a model of that stage)")
    split: str = Field("random:vector", description="which of that stage's splits (its `split` column)")
    machines: list[str] = Field(min_length=2, description="systems jobs may run on (their speed_ targets)")
    sites: dict[str, str] = Field(
        default_factory=dict, description="system -> site name, where it is not the system's machine name"
    )
    nodes: dict[str, int] = Field(
        default_factory=dict, description="node counts of systems that have no site file (and only those)"
    )
    jobs: int = Field(50_000, ge=1, le=1_000_000)
    max_nodes: int = Field(4, ge=1, description="a job asks for 1 to max_nodes nodes, uniformly")
    mean_interarrival: float = Field(1.0, gt=0, description="mean time between arrivals (exponential)")
    mean_runtime: float = Field(20.0, gt=0, description="mean run time on the job's fastest machine")
    backfill_depth: int = Field(100, ge=0)

    @model_validator(mode="after")
    def _node_counts_resolve(self) -> SimulateParams:
        node_counts(self.machines, self.sites, self.nodes)
        return self

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)


def node_counts(machines: list[str], sites: dict[str, str], nodes: dict[str, int]) -> dict[str, int]:
    """Each system's node count: its site file's `nodes`, else `nodes` (the module docstring)."""
    from perfscale.spec.site import available_sites, load_site

    known = available_sites()
    stray = sorted((set(sites) | set(nodes)) - set(machines))
    if stray:
        raise ValueError(f"sites/nodes name systems {stray} that are not in machines {machines}")
    counts: dict[str, int] = {}
    for system in machines:
        site = sites.get(system, system.rsplit("_", 1)[0])
        if system in sites and site not in known:
            raise ValueError(f"sites: {system} -> {site!r}, but no site file has that name; {sorted(known)}")
        if site in known:
            if system in nodes:
                raise ValueError(
                    f"nodes: {system!r} has a site file ({known[site]}) whose `nodes` gives its node count; "
                    f"remove {system!r} from nodes (or edit the site file)"
                )
            count = load_site(site).nodes
            if count is None:
                raise ValueError(
                    f"{system}: site file {known[site]} has no `nodes` (nodes in the machine); add it there"
                )
            counts[system] = count
        elif system in nodes:
            if nodes[system] < 1:
                raise ValueError(f"nodes: {system!r} has {nodes[system]} nodes; give 1 or more")
            counts[system] = nodes[system]
        else:
            raise ValueError(
                f"{system}: no site file named {site!r} (known: {sorted(known)}) and no entry in nodes; add "
                f"'{system}: N' to nodes, or map it to a site with sites"
            )
    return counts


@stage_kind("simulate", SimulateParams)
def simulate_stage(ctx: StageContext, params: SimulateParams) -> pd.DataFrame:
    """Makespan and mean wait per placement policy (predicted, true, random)."""
    from perfscale.errors import BadInput
    from perfscale.models.schedsim import place_and_simulate

    table = ctx.input(params.source)
    rows = table[(table["model"] == params.model) & (table["split"] == params.split)]
    if rows.empty:
        pairs = sorted(set(zip(table["model"], table["split"], strict=True)))
        raise BadInput(f"simulate: {params.source!r} has no rows of model {params.model!r}, split "
                       f"{params.split!r}; it has {pairs}")  # fmt: skip
    truth = pd.DataFrame({m: rows.get(f"truth_speed_{m}") for m in params.machines})
    guess = pd.DataFrame({m: rows.get(f"pred_speed_{m}") for m in params.machines})
    missing = [m for m in params.machines if truth[m].isna().all() or guess[m].isna().all()]
    if missing:
        raise BadInput(f"simulate: {params.source!r} predicts no speed_ target for machines {missing}")
    counts = node_counts(params.machines, params.sites, params.nodes)
    result = place_and_simulate(
        truth.reset_index(drop=True),
        guess.clip(lower=1e-6).reset_index(drop=True),
        counts,
        params.jobs,
        ctx.seed,
        max_nodes=params.max_nodes,
        mean_interarrival=params.mean_interarrival,
        mean_runtime=params.mean_runtime,
        backfill_depth=params.backfill_depth,
    )
    nodes = {f"nodes_{m}": n for m, n in counts.items()}
    return result.assign(model=params.model, split=params.split, **nodes)
