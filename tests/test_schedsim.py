"""The scheduling simulator (perfscale.models.schedsim): EASY backfilling on a hand-checked 5-job case, and
placement policies on a small RPV table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perfscale.errors import BadInput
from perfscale.models.schedsim import Job, place_and_simulate, simulate


def test_easy_backfilling_by_hand():
    """One 4-node machine, five jobs at t=0 (nodes, run time): J1 (2, 10) starts; J2 (4, 5) waits for J1's
    nodes: reservation at 10. J3 (2, 5) ends by 10: backfilled at 0. At 5 (J3 ends) J4 (1, 20) would end
    after 10 and the head needs every node then: no; J5 (2, 5) ends at 10: backfilled at 5. At 10 J2 starts,
    at 15 J4."""
    jobs = [Job(1, 0, 2, 10), Job(2, 0, 4, 5), Job(3, 0, 2, 5), Job(4, 0, 1, 20), Job(5, 0, 2, 5)]
    for j in jobs:
        j.machine = "m"
    out = simulate(jobs, {"m": 4}).set_index("job")
    assert out["start"].to_dict() == {1: 0, 2: 10, 3: 0, 4: 15, 5: 5}
    assert out["end"].max() == 35 and out["wait"].mean() == 6


def test_backfill_uses_nodes_the_head_will_not_need():
    """A head needing 3 of 4 nodes leaves one spare at its reservation: a long 1-node job may use it."""
    jobs = [Job(1, 0, 3, 10), Job(2, 0, 3, 5), Job(3, 0, 1, 100)]
    for j in jobs:
        j.machine = "m"
    out = simulate(jobs, {"m": 4}).set_index("job")
    assert out["start"].to_dict() == {1: 0, 2: 10, 3: 0}
    without = simulate([Job(1, 0, 3, 10, machine="m"), Job(2, 0, 3, 5, machine="m")], {"m": 4})
    assert without["start"].tolist() == [0, 10]


def test_policies():
    """The true best placement is never slower than random; a perfect prediction places as the truth."""
    true = pd.DataFrame({"fast": [1.0, 1.0, 0.5], "slow": [0.1, 0.2, 1.0]})
    out = place_and_simulate(true, true, {"fast": 8, "slow": 8}, n_jobs=400, seed=1, mean_interarrival=5)
    by = out.set_index("policy")
    assert by.loc["predicted", "makespan"] == by.loc["true", "makespan"]
    assert by.loc["true", "mean_runtime"] < by.loc["random", "mean_runtime"]
    assert by.loc["true", "mean_wait"] <= by.loc["random", "mean_wait"]
    assert np.isclose(by.loc["random", ["share_fast", "share_slow"]].sum(), 1)
    with pytest.raises(BadInput, match="exceeds every machine's node count"):
        place_and_simulate(true, true, {"fast": 2, "slow": 2}, n_jobs=10, seed=1, max_nodes=3)
    with pytest.raises(BadInput, match=r"machines \['other'\] have no speed column"):
        place_and_simulate(true, true, {"fast": 2, "other": 2}, n_jobs=10, seed=1)


def test_simulate_node_counts_come_from_site_files(tmp_path, monkeypatch):
    """The `simulate` stage: a system's node count is its site file's `nodes` (quartz_cpu -> quartz.yaml);
    only systems without a site file take one from `nodes`; every other mix is refused, naming the fix."""
    from pydantic import ValidationError

    from perfscale.spec import load_site
    from perfscale.stages.simulate import SimulateParams, node_counts

    quartz, lassen = load_site("quartz").nodes, load_site("lassen").nodes
    assert (quartz, lassen) == (3018, 795)
    assert node_counts(["quartz_cpu", "lassen_gpu", "H100_gpu"], {}, {"H100_gpu": 16}) == {
        "quartz_cpu": quartz, "lassen_gpu": lassen, "H100_gpu": 16
    }  # fmt: skip
    assert node_counts(["cpu_side", "gpu_side"], {"cpu_side": "ruby", "gpu_side": "corona"}, {}) == {
        "cpu_side": load_site("ruby").nodes, "gpu_side": load_site("corona").nodes
    }  # fmt: skip
    base = {"source": "fit", "model": "xgboost"}
    refused = [
        ({"machines": ["quartz_cpu", "H100_gpu"]}, r"H100_gpu: no site file named 'H100'.*add 'H100_gpu: N'"),
        ({"machines": ["quartz_cpu", "H100_gpu"], "nodes": {"quartz_cpu": 8, "H100_gpu": 8}},
         r"'quartz_cpu' has a site file .*quartz.yaml.*remove 'quartz_cpu' from nodes"),
        ({"machines": ["quartz_cpu", "H100_gpu"], "nodes": {"H100_gpu": 8, "B200_gpu": 4}},
         r"systems \['B200_gpu'\] that are not in machines"),
        ({"machines": ["quartz_cpu", "H100_gpu"], "sites": {"H100_gpu": "nowhere"}},
         r"H100_gpu -> 'nowhere', but no site file has that name"),
        ({"machines": ["local_cpu", "H100_gpu"], "nodes": {"H100_gpu": 8}},
         r"site file .*local.yaml has no `nodes`.*add it there"),
    ]  # fmt: skip
    for params, message in refused:
        with pytest.raises(ValidationError, match=message):
            SimulateParams(**base, **params)
    # a site on $PERFSCALE_SITE_PATH counts like a shipped one
    (tmp_path / "h100.yaml").write_text("name: h100\nnodes: 12\n")
    monkeypatch.setenv("PERFSCALE_SITE_PATH", str(tmp_path))
    assert node_counts(["H100_gpu", "quartz_cpu"], {"H100_gpu": "h100"}, {}) == {
        "H100_gpu": 12,
        "quartz_cpu": quartz,
    }
