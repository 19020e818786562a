"""`perfscale sites probe`: the site files' claims checked against this machine, for real.

Expectations are computed from the machine itself (os.cpu_count, /proc/meminfo, PATH), so the tests hold on
any Linux host: the local site (auto values) passes everything it claims, quartz (36 cores, 128 GB, Slurm)
reports its mismatches. The empty-PATH test shows what a laptop without any HPC tool reports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from perfscale.cli import main
from perfscale.spec import load_site
from perfscale.spec.probe import Check, gpus_here, meminfo_gb, probe


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _perf_usable() -> bool:
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    return shutil.which("perf") is not None and (os.geteuid() == 0 or paranoid <= 2)


def test_probing_local_here_passes_what_local_claims():
    checks = _by_name(probe(load_site("local")))
    assert list(checks) == [
        "arch",
        "scheduler",
        "launcher",
        "cores per node",
        "memory per node",
        "GPUs per node",
        "perf",
        "PAPI",
        "MPI",
    ]
    for name in ("arch", "scheduler", "launcher", "cores per node", "memory per node", "PAPI", "MPI"):
        assert checks[name].ok, checks[name]
    assert checks["cores per node"].expected == "auto"
    assert checks["cores per node"].found.split()[0] == str(os.cpu_count())
    assert checks["memory per node"].found == f"{meminfo_gb():.1f} GiB"
    # local claims no GPU and perf counters: true exactly when this machine has none / has a usable perf
    assert checks["GPUs per node"].ok == (gpus_here()[0] == 0)
    assert checks["perf"].ok == _perf_usable()


@pytest.fixture(scope="module")
def quartz_checks() -> dict[str, Check]:
    """Probed once: `sinfo` alone can take seconds where slurm is installed but no controller answers."""
    return _by_name(probe(load_site("quartz")))


def test_probing_quartz_here_reports_the_mismatches(quartz_checks):
    checks = quartz_checks
    cores = checks["cores per node"]
    assert cores.expected == "36" and cores.found.split()[0] == str(os.cpu_count())
    assert cores.ok == (os.cpu_count() == 36)
    memory = checks["memory per node"]
    assert memory.expected == "128 GiB (±10%)"
    assert memory.ok == (abs(meminfo_gb() - 128) <= 12.8)
    scheduler = checks["scheduler (slurm)"]
    assert scheduler.expected == "sbatch squeue sacct"
    assert scheduler.ok == all(shutil.which(c) for c in ("sbatch", "squeue", "sacct"))
    assert checks["launcher"].ok == (shutil.which("srun") is not None)
    assert checks["partitions"].expected == "pbatch pdebug"
    assert checks["MPI"].ok == (importlib.util.find_spec("mpi4py") is not None)
    assert checks["PAPI"].expected == "active component perf_event"  # quartz claims PAPI, local does not
    assert not all(c.ok for c in checks.values())


def test_a_machine_without_hpc_tools(monkeypatch, tmp_path):
    """No scheduler, launcher, perf, PAPI or MPI on PATH: every claim of quartz about them is a mismatch,
    reported as a finding, not an exception."""
    monkeypatch.setenv("PATH", str(tmp_path))
    checks = _by_name(probe(load_site("quartz")))
    assert checks["scheduler (slurm)"] == Check(
        "scheduler (slurm)", "sbatch squeue sacct", "missing: sbatch squeue sacct", False
    )
    assert checks["partitions"].found == "cannot query the scheduler (sinfo)" and not checks["partitions"].ok
    assert checks["launcher"] == Check("launcher", "srun", "not on PATH", False)
    assert checks["perf"].found.startswith("no perf") and not checks["perf"].ok
    assert checks["PAPI"].found == "papi_component_avail not on PATH" and not checks["PAPI"].ok
    assert checks["GPUs per node"] == Check("GPUs per node", "0", "0", True)
    lassen = _by_name(probe(load_site("lassen")))
    assert lassen["scheduler (lsf)"].found == "missing: bsub bjobs"
    assert lassen["GPUs per node"] == Check("GPUs per node", "4 (NVIDIA V100 16GB)", "0", False)


def test_meminfo_is_read_in_gib(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       24576000 kB\nMemFree:         1000 kB\n")
    assert meminfo_gb(path) == pytest.approx(24576000 / 1024**2)
    assert meminfo_gb(tmp_path / "missing") is None


def test_cli_sites_list_show_and_probe(capsys, tmp_path):
    assert main(["sites", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("local", "quartz", "lassen", "ruby", "corona"))
    assert main(["sites", "show", "quartz"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["cores_per_node"], shown["scheduler"], shown["launcher"]) == (36, "slurm", "srun")
    assert main(["sites", "show"]) == 2
    # a site file (by path) that claims one core more than this machine has: exit status 1
    wrong = tmp_path / "wrong.yaml"
    gpus = gpus_here()[0]
    claims = f"cores_per_node: {os.cpu_count() + 1}\ngpus_per_node: {gpus}\n"
    claims += "gpu_vendor: nvidia\n" if gpus else ""  # the vendor is not probed
    wrong.write_text("name: wrong\nscheduler: none\n" + claims)
    assert main(["sites", "probe", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert (
        "site 'wrong' on this machine" in out
        and "MISMATCH" in out
        and "1 mismatch(es): cores per node" in out
    )
    local_ok = all(c.ok for c in probe(load_site("local")))
    assert main(["sites", "probe"]) == (0 if local_ok else 1)  # the local site by default
    out = capsys.readouterr().out
    assert "site 'local' on this machine" in out and ("all checks pass" in out) == local_ok
