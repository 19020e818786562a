# ruff: noqa: E501  (expected job scripts hold long command lines verbatim)
"""PBS Pro and Flux up to the scheduler's edge: neither runs here (docs/clusters.md), so each is tested as LSF
is: job scripts rendered and checked line by line, the element part of each script run for real by bash on a
real run folder (with the environment the scheduler would set), and the parsers fed output written in the
formats the schedulers' own sources and documentation give (each fixture says where its format comes from).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perfscale.errors import FailureKind, SpecError
from perfscale.plan import build_plan
from perfscale.sched.arrays import stage_arrays
from perfscale.sched.base import make_scheduler
from perfscale.sched.client import CommandClient, SchedulerCommandError
from perfscale.sched.mpi import Layout, launch_line, launcher_for
from perfscale.sched.pbs import PBS, parse_qstat_poll, parse_qsub, pbs_failure, qstat_poll_argv, qsub_argv
from perfscale.sched.render import render_array
from perfscale.spec import load_site
from perfscale.spec.study import Study
from perfscale.store import RunStore
from tests.test_parsl_providers import submitted_script
from tests.test_sched_render import element_body

PY = sys.executable


def _tasks(n: int, walltime: str = "00:10:00", **resources):
    study = Study.model_validate(
        {
            "name": "s",
            "stages": {
                "p": {
                    "kind": "noop",
                    "grid": {"product": {"i": list(range(n))}},
                    "resources": {"walltime": walltime, **resources},
                }
            },
        }
    )
    return build_plan(study).of_stage("p")


def _expected(text: str, run: Path) -> list[str]:
    return text.replace("@RUN@", str(run.resolve())).replace("@PYTHON@", PY).splitlines()


# ------------------------------------------------------------------------------------------------ PBS Pro

# From the OpenPBS sources (src/cmds/qsub.c, src/lib/Libcmds/chk_Jrange.c) and the PBS Pro user guide:
# -J start-end%max (max = max_run_subjobs), -l select=N:ncpus=C:ngpus=G:mem=Mmb chunks, -l place=scatter,
# -l walltime=HH:MM:SS, -q queue, -A project, -o path with ^array_index^ replaced by the subjob index,
# -j oe, -r y (arrays must be rerunnable), and ALCF's required -l filesystems= (a site directive).
EXPECTED_QSUB = """\
#!/bin/bash
# perfscale array job s-p-0: stage p, 3 elements
#PBS -N s-p-0
#PBS -J 0-2%2
#PBS -l select=1:ncpus=4:ngpus=1:mem=2048mb
#PBS -l place=scatter
#PBS -l walltime=00:10:00
#PBS -q debug
#PBS -A 'my proj'
#PBS -o '@RUN@/logs/s-p-0.^array_index^.out'
#PBS -j oe
#PBS -r y
#PBS -l filesystems=home:eagle
cd "${PBS_O_WORKDIR:-.}"
set -u
module use /soft/modulefiles
export OMP_PLACES='{0}:8'
element=${PBS_ARRAY_INDEX:-0}
export PERFSCALE_ELEMENT="pbs job ${PBS_ARRAY_ID:-$PBS_JOBID}[${element}]"
export PERFSCALE_ELEMENT_DEADLINE=$(($(date +%s) + 600))
indices=$(sed -n "$((element + 1))p" @RUN@/arrays/s-p-0.idx)
resume=@RUN@/arrays/s-p-0.idx."$element".resume
""" + element_body(": no requeue on PBS")


def _site(name: str, **update):
    return load_site(name).model_copy(update=update)


def _polaris(**update):
    return _site("polaris", **update)


def test_qsub_script_line_by_line(tmp_path: Path):
    site = _polaris(env={"OMP_PLACES": "{0}:8"})
    (job,) = stage_arrays(
        "s", "p", _tasks(3, cores=4, memory_gb=2, gpus=1), site, "debug", "my proj", throttle=2
    )
    rendered = render_array(job, site, tmp_path)
    assert rendered.script.splitlines() == _expected(EXPECTED_QSUB, tmp_path)
    assert rendered.index_file == "0\n1\n2\n"


def test_one_element_is_a_plain_job_with_index_zero(tmp_path: Path):
    """chk_Jrange refuses `-J 0-0` (start must be below end): one element is submitted without -J, its log
    has no ^array_index^ to fill, and the script reads index 0 when PBS_ARRAY_INDEX is unset."""
    site = _polaris()
    (job,) = stage_arrays("s", "p", _tasks(1), site)
    lines = render_array(job, site, tmp_path).script.splitlines()
    assert not [ln for ln in lines if ln.startswith("#PBS -J")]
    assert f"#PBS -o {tmp_path.resolve()}/logs/s-p-0.0.out" in lines
    assert "#PBS -q prod" in lines and "#PBS -l walltime=00:10:00" in lines
    assert "element=${PBS_ARRAY_INDEX:-0}" in lines


def test_walltime_in_hours_past_a_day(tmp_path: Path):
    site = _polaris()
    (job,) = stage_arrays("s", "p", _tasks(2, walltime="1-02:00:30"), site, "preemptable")
    assert "#PBS -l walltime=26:00:30" in render_array(job, site, tmp_path).script.splitlines()


def test_directives_with_a_newline_are_refused(tmp_path: Path):
    site = _polaris(directives=["-l filesystems=home\nrm -rf ~"])
    (job,) = stage_arrays("s", "p", _tasks(2), site)
    with pytest.raises(SpecError, match="holds a newline"):
        render_array(job, site, tmp_path)


def _prepare(folder: Path, site, n: int):
    from perfscale.runner import prepare_run

    study = folder / "study.yaml"
    study.write_text(
        textwrap.dedent(
            f"""\
            name: s
            stages:
              p:
                kind: noop
                grid: {{product: {{i: {list(range(n))}}}}}
            """
        )
    )
    store = prepare_run(study, site, folder / "run")
    (job,) = stage_arrays("s", "p", list(store.plan.tasks), site, pack_tasks=False)
    rendered = render_array(job, site, store.root)
    (store.root / "arrays").mkdir(exist_ok=True)
    (store.root / "arrays" / f"{job.name}.sh").write_text(rendered.script)
    (store.root / "arrays" / f"{job.name}.idx").write_text(rendered.index_file)
    return store, store.root / "arrays" / f"{job.name}.sh"


def _done(store: RunStore) -> list[int]:
    keys = store.done_keys("p")
    return [t.index for t in store.plan.tasks if t.key in keys]


def test_pbs_script_runs_the_subjobs_tasks_for_real(tmp_path: Path):
    """bash runs the rendered script as PBS would start subjob 2 (PBS_ARRAY_INDEX, PBS_ARRAY_ID, PBS_JOBID,
    PBS_O_WORKDIR set; `#PBS` lines are comments to bash): it runs task 2 only, in the submission folder."""
    store, script = _prepare(tmp_path, _polaris(setup=[]), 3)
    env = {
        **os.environ,
        "PBS_ARRAY_INDEX": "2",
        "PBS_ARRAY_ID": "4242[].pbs01",
        "PBS_JOBID": "4242[2].pbs01",
        "PBS_O_WORKDIR": str(tmp_path),
    }
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _done(RunStore(store.root)) == [2]
    env.pop("PBS_ARRAY_INDEX")  # a one-element job is a plain job: no index, element 0
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _done(RunStore(store.root)) == [0, 2]


def test_qsub_argv_and_ids():
    script = Path("/r/arrays/s-p-0.sh")
    assert qsub_argv(script, []) == ["qsub", "/r/arrays/s-p-0.sh"]
    assert qsub_argv(script, ["1[].s", "2.s"], hold=True, after_any=["3[].s"]) == [
        "qsub",
        "-h",
        "-W",
        "depend=afterok:1[].s:2.s,afterany:3[].s",
        "/r/arrays/s-p-0.sh",
    ]
    # qsub prints the id alone on stdout (array ids carry []): formats from the PBS Pro user guide
    assert parse_qsub("123[].polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n") == (
        "123[].polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
    )
    assert parse_qsub("124.pbs01\n") == "124.pbs01"
    with pytest.raises(SchedulerCommandError, match="qsub did not report a job id"):
        parse_qsub("qsub: Job violates queue and/or server resource limits\n")
    assert PBS.element_id("123[].pbs01", 4) == "123[4].pbs01"
    assert PBS.element_id("124.pbs01", 0) == "124.pbs01"
    assert qstat_poll_argv(["123[].pbs01", "124.pbs01"]) == [
        "qstat", "-x", "-f", "-F", "json", "-t", "123[].pbs01", "124.pbs01"
    ]  # fmt: skip


def _qstat_json(jobs: dict) -> str:
    """`qstat -f -F json` as OpenPBS prints it: the prolog of the PP-483 design ("timestamp", "pbs_version",
    "pbs_server") and "Jobs" keyed by job id; attribute names from src/include/pbs_ifl.h (job_state, substate,
    Exit_status, array_index, comment), numbers as JSON numbers (pbs_json_insert_parsed in src/cmds/qstat.c)."""
    return json.dumps(
        {"timestamp": 1764000000, "pbs_version": "2022.1.1", "pbs_server": "pbs01", "Jobs": jobs}
    )


QSTAT_JOBS = {
    "123[].pbs01": {"Job_Name": "s-p-0", "job_state": "B", "array": "True", "array_indices_submitted": "0-6%2",
                    "array_state_count": "Queued:1 Running:1 Exiting:0 Expired:5 "},
    "123[0].pbs01": {"job_state": "X", "substate": 92, "Exit_status": 0, "array_index": 0, "comment": "Subjob finished"},
    "123[1].pbs01": {"job_state": "X", "substate": 93, "Exit_status": 1, "array_index": 1, "comment": "Subjob failed"},
    "123[2].pbs01": {"job_state": "X", "substate": 93, "Exit_status": -29, "array_index": 2},
    "123[3].pbs01": {"job_state": "X", "substate": 91, "Exit_status": 271, "array_index": 3, "comment": "Subjob terminated"},
    "123[4].pbs01": {"job_state": "X", "substate": 93, "Exit_status": -27, "array_index": 4},
    "123[5].pbs01": {"job_state": "R", "substate": 42, "array_index": 5},
    "123[6].pbs01": {"job_state": "Q", "substate": 10, "array_index": 6},
    "124.pbs01": {"job_state": "F", "substate": 92, "Exit_status": "0"},  # older servers: numbers as strings
    "125[].pbs01": {"job_state": "F", "substate": 54},  # aborted: its afterok dependency failed, never ran
    "125[0].pbs01": {"job_state": "X", "substate": 54},
    "999.other": {"job_state": "R"},  # not asked for
}  # fmt: skip


def test_qstat_json_poll_parsing():
    ids = ["123[].pbs01.example.org", "124.pbs01", "125[].pbs01"]  # matched by sequence number
    states = parse_qstat_poll(_qstat_json(QSTAT_JOBS), ids)
    a = ids[0]
    assert sorted(states) == sorted([*((a, k) for k in range(7)), (ids[1], 0), (ids[2], 0)])
    summary = {k: (s.state, s.active, s.failure, s.exit_code) for k, s in states.items()}
    assert summary[(a, 0)] == ("FINISHED", False, None, 0)
    assert summary[(a, 1)] == ("FAILED", False, FailureKind.APP_ERROR, 1)
    assert summary[(a, 2)] == ("FAILED", False, FailureKind.TIMEOUT, -29)
    assert summary[(a, 3)] == ("TERMINATED", False, FailureKind.CANCELLED, 271)
    assert summary[(a, 4)] == ("FAILED", False, FailureKind.OOM, -27)
    assert summary[(a, 5)] == ("RUNNING", True, None, None)
    assert summary[(a, 6)] == ("QUEUED", True, None, None)
    assert summary[(ids[1], 0)] == ("FINISHED", False, None, 0)
    assert summary[(ids[2], 0)] == ("ABORTED", False, None, None)
    assert states[(a, 1)].reason == "Subjob failed" and states[(a, 1)].job_id == a
    assert parse_qstat_poll(json.dumps({"timestamp": 1, "pbs_version": "x", "pbs_server": "s"}), ids) == {}


@pytest.mark.parametrize(
    ("letter", "substate", "exit_status", "kind"),
    [
        ("R", 42, None, None),
        ("H", 22, None, None),  # held on a dependency: waiting, not failed
        ("X", 92, 0, None),
        ("F", 93, 2, FailureKind.APP_ERROR),
        ("F", 93, None, FailureKind.APP_ERROR),
        ("F", 93, -29, FailureKind.TIMEOUT),
        ("F", 93, -28, FailureKind.TIMEOUT),
        ("F", 93, -26, FailureKind.OOM),
        ("F", 93, 265, FailureKind.OOM),  # 256 + SIGKILL
        ("F", 93, 271, FailureKind.CANCELLED),  # 256 + SIGTERM
        ("F", 91, None, FailureKind.CANCELLED),  # qdel before it ran
        ("F", 93, -20, FailureKind.NODE_LOST),  # mother superior lost
        ("F", 93, -1, FailureKind.NODE_LOST),
        ("F", 93, -24, FailureKind.APP_ERROR),  # ncpus burst over the request
        ("F", 54, None, None),  # aborted before it ran (failed dependency)
    ],
)
def test_pbs_states(letter, substate, exit_status, kind):
    assert pbs_failure(letter, substate, exit_status) == kind


@pytest.fixture
def commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put small scripts named like scheduler commands first on PATH. They run as real processes through
    perfscale's CommandClient and print what the scheduler's documentation shows; every call is appended to
    the file returned (one line: the command and its arguments)."""
    bindir, log = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    log.touch()

    def install(**bodies: str) -> Path:
        for name, body in bodies.items():
            path = bindir / name
            path.write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\n{body}\n')
            path.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
        return log

    return install


def test_pbs_commands_through_the_client_with_partial_answers(tmp_path: Path, commands):
    """The ids, qstat's exit status 153 (PBSE_UNKJOBID & 0xff: one id purged, the others still printed), one
    call per poll, and qdel of whole arrays."""
    out = tmp_path / "qstat.json"
    out.write_text(_qstat_json(QSTAT_JOBS))
    log = commands(
        qsub='echo "123[].pbs01"',
        qstat=f'cat {out}; echo "qstat: Unknown Job Id 100[].pbs01" >&2; exit 153',
        qdel="true",
    )
    client = CommandClient(retries=0)
    sched = make_scheduler(_polaris(), client)
    assert sched.submit(tmp_path / "a.sh", ["100[].pbs01"]) == "123[].pbs01"
    states = sched.poll(["100[].pbs01", "123[].pbs01"])
    sched.cancel(["123[].pbs01"])
    assert len(states) == 7 and client.calls == {"qsub": 1, "qstat": 1, "qdel": 1}
    assert log.read_text().splitlines() == [
        f"qsub -W depend=afterok:100[].pbs01 {tmp_path}/a.sh",
        "qstat -x -f -F json -t 100[].pbs01 123[].pbs01",
        "qdel 123[].pbs01",
    ]


def _two_stage_study(folder: Path) -> Path:
    study = folder / "study.yaml"
    study.write_text(
        textwrap.dedent(
            """\
            name: two
            stages:
              p:
                kind: noop
                grid: {product: {i: [0, 1, 2]}}
              q:
                kind: noop
                inputs: [p]
            """
        )
    )
    return study


def test_perfscale_submit_status_cancel_on_pbs(tmp_path: Path, commands, capsys):
    """`perfscale submit` on a PBS site: stage p as a 3-subjob array, stage q (one task) as a plain job held
    on p by afterok; `perfscale status` polls once; `perfscale cancel` sends one qdel."""
    from perfscale.cli import main

    counter = tmp_path / "next"
    counter.write_text("500")
    qstat = tmp_path / "qstat.json"
    qstat.write_text(
        _qstat_json(
            {
                "500[].pbs01": {"job_state": "B"},
                "500[0].pbs01": {"job_state": "X", "substate": 92, "Exit_status": 0},
                "500[1].pbs01": {"job_state": "R", "substate": 42},
                "500[2].pbs01": {"job_state": "Q", "substate": 10},
                "501.pbs01": {"job_state": "H", "substate": 22},
            }
        )
    )
    log = commands(
        qsub=f'n=$(cat {counter}); echo $((n + 1)) > {counter}; if grep -q "^#PBS -J" "${{@: -1}}"; '
        'then echo "$n[].pbs01"; else echo "$n.pbs01"; fi',
        qstat=f"cat {qstat}",
        qdel="true",
    )
    site = tmp_path / "polaris.yaml"
    site.write_text(load_site("polaris").model_dump_json())  # JSON is YAML
    run = tmp_path / "run"
    assert main(["submit", str(_two_stage_study(tmp_path)), "--site", str(site), "--run-dir", str(run)]) == 0
    jobs = json.loads((run / "arrays" / "jobs.json").read_text())
    assert [(j["name"], j["job_id"], j["first_index"], j["elements"]) for j in jobs] == [
        ("two-p-0", "500[].pbs01", 0, [[0], [1], [2]]),
        ("two-q-0", "501.pbs01", 0, [[3]]),
    ]
    calls = log.read_text().splitlines()
    assert calls == [
        f"qsub {run}/arrays/two-p-0.sh",
        f"qsub -W depend=afterok:500[].pbs01 {run}/arrays/two-q-0.sh",
    ]
    assert "#PBS -J 0-2%3" in (run / "arrays" / "two-p-0.sh").read_text().splitlines()
    assert (run / "arrays" / "two-q-0.idx").read_text() == "3\n"

    from perfscale.sched.submit import poll

    states = poll(RunStore(run))
    assert {i: (s.state, s.active) for i, s in states.items()} == {
        0: ("FINISHED", False),
        1: ("RUNNING", True),
        2: ("QUEUED", True),
        3: ("HELD", True),
    }
    assert main(["cancel", str(run)]) == 0
    assert log.read_text().splitlines()[-2:] == [
        "qstat -x -f -F json -t 500[].pbs01 501.pbs01",
        "qdel 500[].pbs01 501.pbs01",
    ]


def test_mpiexec_launcher():
    site = _polaris()
    lay = Layout(nodes=2, ranks_per_node=4, cores_per_rank=8, gpus_per_rank=1)
    assert launch_line(site, lay) == [
        "mpiexec",
        "-n",
        "8",
        "--ppn",
        "4",
        "--depth",
        "8",
        "--cpu-bind",
        "depth",
    ]
    assert launch_line(site, Layout(bind="none"))[-1] == "none"
    assert launcher_for(site).pin(["x1", "x2"]) == ["--hosts", "x1,x2"]
    with pytest.raises(SpecError, match="exceed the 32 cores"):
        launch_line(site, Layout(ranks_per_node=4, cores_per_rank=9))


def test_pbs_pilots_from_polaris(tmp_path: Path):
    from parsl.launchers import MpiExecLauncher
    from parsl.providers import PBSProProvider

    from perfscale.engines.dask_engine import dask_cluster_config, jobqueue_cluster
    from perfscale.engines.parsl_engine import make_provider

    site = _polaris(accounts=["myproj"])
    p = make_provider(site, walltime_s=3600, partition="debug", nodes_per_block=2)
    assert isinstance(p, PBSProProvider) and isinstance(p.launcher, MpiExecLauncher)
    assert (p.account, p.queue, p.nodes_per_block, p.walltime) == ("myproj", "debug", 2, "01:00:00")
    assert p.scheduler_options == "#PBS -l filesystems=home:eagle" and p.select_options == "ngpus=4"
    assert p.launcher.overrides == "--depth=32 --ppn 1" and p.launcher.bind_cmd == "--cpu-bind"
    # the script Parsl would qsub (written, not submitted: its command runner is replaced)
    job_id, argv, text = submitted_script(p, tmp_path, "77.pbs01\n")
    assert job_id == "77.pbs01"
    assert argv[:5] == ["qsub", "-q", "debug", "-A", "myproj"]  # PBSProProvider puts these on the command
    script = text.splitlines()
    for line in (
        "#PBS -l select=2:ncpus=32:ngpus=4",
        "#PBS -l walltime=01:00:00",
        "#PBS -l filesystems=home:eagle",
    ):
        assert line in script, line
    assert any("mpiexec" in ln and "--depth=32 --ppn 1" in ln for ln in script)

    config = dask_cluster_config(site, tmp_path, partition="debug")
    assert (config["resource_spec"], config["walltime"], config["account"]) == (
        "select=1:ncpus=32:ngpus=4",
        "01:00:00",
        "myproj",
    )
    cluster = jobqueue_cluster(site, **config)
    try:
        lines = cluster.job_script().splitlines()
    finally:
        cluster.close()
    assert "#PBS -l select=1:ncpus=32:ngpus=4" in lines and "#PBS -l filesystems=home:eagle" in lines


# ------------------------------------------------------------------------------------------------ Flux

# From flux-batch(1) and RFC 36 (submission directives: one sentinel `# flux:`, shell quoting, grouped before
# the script), flux-submit(1) (--cc=IDSET with {cc} replaced in options and arguments, FLUX_JOB_CC in each
# copy, --wait, --signal=SIG@TIME, --time-limit in FSD) and flux-jobs(1) (--json); the batch script runs as
# the allocation's initial program with FLUX_ENCLOSING_ID set (flux-environment(7)).
EXPECTED_FLUX = """\
#!/bin/bash
# flux: --job-name=s-p-0
# flux: --nodes=2
# flux: --exclusive
# flux: --time-limit=3720s
# flux: --queue=pbatch
# flux: --bank='my bank'
# flux: --output=@RUN@/logs/s-p-0.allocation.out
# flux: --setattr=system.cwd=/p/lustre1
# perfscale array job s-p-0: stage p, 40 elements, 16 at a time in one Flux allocation
set -u
module load rocm
if [ "${1:-}" != --element ]; then
  export PERFSCALE_FLUX_ALLOCATION="${FLUX_ENCLOSING_ID:-}"
  flux submit --quiet --wait --cc=0-39 --job-name=s-p-0.{cc} --nodes=1 --ntasks=1 --cores-per-task=4 --gpus-per-task=1 --time-limit=1200s --signal=USR1@120s --output='@RUN@/logs/s-p-0-{cc}.out' bash @RUN@/arrays/s-p-0.sh --element
  rc=$?
  flux jobs -a -c 0 --json > @RUN@/arrays/s-p-0.flux.json.tmp && mv @RUN@/arrays/s-p-0.flux.json.tmp @RUN@/arrays/s-p-0.flux.json
  exit "$rc"
fi
element=$FLUX_JOB_CC
allocation=${PERFSCALE_FLUX_ALLOCATION:-unknown}
export PERFSCALE_ELEMENT="flux job ${allocation/#ƒ/f}[${element}]"
export PERFSCALE_ELEMENT_DEADLINE=$(($(date +%s) + 1200))
indices=$(sed -n "$((element + 1))p" @RUN@/arrays/s-p-0.idx)
resume=@RUN@/arrays/s-p-0.idx."$element".resume
""" + element_body(": no requeue on Flux")


def _tioga(**update):
    return _site("tioga", **update)


def test_flux_batch_script_line_by_line(tmp_path: Path):
    """40 elements of 4 cores and 1 GPU, 16 at once: a Tioga-like node (64 cores, 8 GPUs) holds 8 of them
    (GPU-bound), so the allocation is 2 nodes, for 3 rounds of 20 min plus 2 min to start: 3,720 s."""
    site = _tioga(directives=["--setattr=system.cwd=/p/lustre1"])
    tasks = _tasks(40, walltime="00:20:00", cores=4, memory_gb=2, gpus=1)
    (job,) = stage_arrays("s", "p", tasks, site, "pbatch", "my bank", throttle=16)
    rendered = render_array(job, site, tmp_path)
    assert rendered.script.splitlines() == _expected(EXPECTED_FLUX, tmp_path)
    assert rendered.index_file == "".join(f"{i}\n" for i in range(40))


def _directive_words(value: str) -> list[str]:
    """How flux-core's Directive splits one directive (src/bindings/python/flux/job/directives.py)."""
    lexer = shlex.shlex(value, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.escapedquotes = "\"'"
    return list(lexer)


def test_flux_directives_follow_rfc36(tmp_path: Path):
    r"""The rules flux batch applies (DirectiveParser in src/bindings/python/flux/job/directives.py): a
    directive is a line matching `^([^\w]*)(flux:)`, all with one sentinel, grouped before the first line that
    does not start with the sentinel's prefix, and each splits as shell words into options (SETARGS)."""
    site = _tioga(directives=["--setattr=system.cwd=/p/lustre1"])
    (job,) = stage_arrays("s", "p", _tasks(3), site, account="it's; rm -rf ~")
    lines = render_array(job, site, tmp_path / "a b").script.splitlines()
    directive = re.compile(r"^([^\w]*)((?:flux|FLUX):)(.*)$")
    found = [(n, m) for n, line in enumerate(lines) if (m := directive.match(line))]
    assert [n for n, _ in found] == list(range(1, len(found) + 1)) and len(found) == 8
    assert {m.group(1) + m.group(2) for _, m in found} == {"# flux:"}
    words = [_directive_words(m.group(3)) for _, m in found]
    assert all(w and w[0].startswith("-") for w in words)
    assert ["--bank=it's; rm -rf ~"] in words  # quoted: one word, no shell code
    assert [f"--output={tmp_path.resolve()}/a b/logs/s-p-0.allocation.out"] in words


def test_flux_allocation_shape_and_limits():
    from perfscale.sched.flux import STARTUP_S, allocation_shape

    site = _tioga()
    (job,) = stage_arrays("s", "p", _tasks(100, cores=1), site, throttle=200)
    assert allocation_shape(job, site) == (2, 100, 600 + STARTUP_S)  # 64 one-core elements per node
    (job,) = stage_arrays("s", "p", _tasks(100, cores=1, gpus=2), site, throttle=100)
    assert allocation_shape(job, site)[:2] == (24, 96)  # 4 per node (8 GPUs / 2), pbatch's 24 nodes
    (job,) = stage_arrays("s", "p", _tasks(100, walltime="00:30:00"), site, "pdebug", throttle=10)
    with pytest.raises(
        SpecError, match=r"100 elements of 00:30:00, 10 at a time on 1 node\(s\), need 05:02:00"
    ):
        allocation_shape(job, site)
    (job,) = stage_arrays("s", "p", _tasks(2, nodes=2), site)
    with pytest.raises(SpecError, match="Flux array mode runs one-node elements"):
        render_array(job, site, Path("/tmp/x"))


def test_flux_element_runs_its_tasks_for_real(tmp_path: Path):
    """bash runs the rendered script as the allocation's `flux submit --cc` starts element 1 (FLUX_JOB_CC=1,
    `--element`): it runs task 1 only; its element tag normalises the allocation's F58 id to ascii."""
    store, script = _prepare(tmp_path, _tioga(setup=[]), 3)
    env = {**os.environ, "FLUX_JOB_CC": "1", "PERFSCALE_FLUX_ALLOCATION": "ƒM7Zq9AKHno"}
    done = subprocess.run(
        ["bash", str(script), "--element"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _done(RunStore(store.root)) == [1]
    lines = script.read_text().splitlines()
    tag = "\n".join(
        ln for ln in lines if ln.startswith(("element=", "allocation=", "export PERFSCALE_ELEMENT="))
    )
    shown = subprocess.run(
        ["bash", "-c", tag + '\necho "$PERFSCALE_ELEMENT"'], env=env, capture_output=True, text=True
    )
    assert shown.stdout == "flux job fM7Zq9AKHno[1]\n"


def test_element_tags_match_what_record_scheduler_failures_looks_for(tmp_path: Path):
    """A task interrupted in an element records `... in <PERFSCALE_ELEMENT>`; the scheduler's record is matched
    to it by `job ID[K]` with ID as submit returned it. PBS: PBS_ARRAY_ID; Flux: the normalised allocation."""
    from perfscale.sched.submit import _element_tag

    for site, env, job_id, element in (
        (_polaris(setup=[]), {"PBS_ARRAY_INDEX": "2", "PBS_ARRAY_ID": "4242[].pbs01"}, "4242[].pbs01", 2),
        (_polaris(setup=[]), {"PBS_JOBID": "4243.pbs01"}, "4243.pbs01", 0),
        (
            _tioga(setup=[]),
            {"FLUX_JOB_CC": "3", "PERFSCALE_FLUX_ALLOCATION": "ƒM7Zq9AKHno"},
            "fM7Zq9AKHno",
            3,
        ),
    ):
        (job,) = stage_arrays("s", "p", _tasks(4), site)
        lines = render_array(job, site, tmp_path).script.splitlines()
        tag = "\n".join(
            ln for ln in lines if ln.startswith(("element=", "allocation=", "export PERFSCALE_ELEMENT="))
        )
        shown = subprocess.run(
            ["bash", "-c", tag + '\necho "$PERFSCALE_ELEMENT"'], env={"PATH": os.environ["PATH"], **env},
            capture_output=True, text=True,
        )  # fmt: skip
        assert _element_tag(job_id, element) in shown.stdout, (shown.stdout, job_id)


def _flux_job(fid: str, name: str, state: str = "INACTIVE", **fields) -> dict:
    """One record as JobInfo.to_dict() writes it (flux-core src/bindings/python/flux/job/info.py): `id` as an
    integer, `jobid` in F58, empty values removed, `exception` always present ({"occurred": False} when none)."""
    record = {"id": 1000 + len(name), "jobid": fid, "userid": 1000, "urgency": 16, "priority": 16,
              "t_submit": 1764000000.0, "state": state, "name": name, "ntasks": 1, "nnodes": 1,
              "exception": {"occurred": False}}  # fmt: skip
    return {**record, **fields}


def _exc(kind: str, note: str) -> dict:
    return {"occurred": True, "severity": 0, "type": kind, "note": note}


ELEMENTS = [
    _flux_job("ƒ2a", "s-p-0.0", result="COMPLETED", success=True, waitstatus=0, returncode=0),
    _flux_job("ƒ2b", "s-p-0.1", result="FAILED", success=False, waitstatus=256, returncode=1),
    # job-exec timelimit_cb: exception type "timeout", note "resource allocation expired", then SIGALRM
    _flux_job("ƒ2c", "s-p-0.2", result="TIMEOUT", success=False, waitstatus=14, returncode=-14,
              exception=_exc("timeout", "resource allocation expired")),
    _flux_job("ƒ2d", "s-p-0.3", result="CANCELED", success=False, returncode=-128, exception=_exc("cancel", "")),
    # job-exec: a lost job shell raises "node-failure"
    _flux_job("ƒ2e", "s-p-0.4", result="FAILED", success=False, returncode=1,
              exception=_exc("node-failure", "lost contact with job shell")),
    _flux_job("ƒ2f", "s-p-0.5", result="FAILED", success=False, waitstatus=35072, returncode=137),
    _flux_job("ƒ2g", "s-p-0.6", state="RUN"),
    _flux_job("ƒ2h", "s-p-0.7", state="SCHED"),
]  # fmt: skip


def test_flux_jobs_json_with_running_allocation():
    """`flux jobs -a -R -L 1 --json A B`: {"jobs": [...]}, each running instance with its own "jobs"."""
    from perfscale.sched.flux import element_states, parse_flux_jobs

    out = json.dumps(
        {
            "jobs": [
                _flux_job("ƒM7Zq9AKHno", "s-p-0", state="RUN", jobs=ELEMENTS),
                _flux_job("ƒN8", "s-q-0", state="DEPEND", dependencies=["afterok:ƒM7Zq9AKHno"]),
            ]
        }
    )
    listing = parse_flux_jobs(out)
    assert sorted(listing) == ["fM7Zq9AKHno", "fN8"]  # F58 ids in one (ascii) form
    alloc = listing["fM7Zq9AKHno"]
    states = element_states("fM7Zq9AKHno", alloc, alloc["jobs"], size=10)
    summary = {k[1]: (s.state, s.active, s.failure, s.exit_code) for k, s in states.items()}
    assert summary == {
        0: ("COMPLETED", False, None, 0),
        1: ("FAILED", False, FailureKind.APP_ERROR, 1),
        2: ("TIMEOUT", False, FailureKind.TIMEOUT, -14),
        3: ("CANCELED", False, FailureKind.CANCELLED, -128),
        4: ("FAILED", False, FailureKind.NODE_LOST, 1),
        5: ("FAILED", False, FailureKind.OOM, 137),
        6: ("RUN", True, None, None),
        7: ("SCHED", True, None, None),
        8: ("PENDING", True, None, None),  # not submitted yet inside the allocation
        9: ("PENDING", True, None, None),
    }
    assert states[("fM7Zq9AKHno", 2)].reason == "timeout: resource allocation expired"
    pending = element_states("fN8", listing["fN8"], None, size=2)  # the allocation waits on its dependency
    assert {k[1]: (s.state, s.active) for k, s in pending.items()} == {
        0: ("DEPEND", True),
        1: ("DEPEND", True),
    }
    # one job id on the command line: one object, not a "jobs" array (src/cmd/flux-jobs.py)
    assert list(parse_flux_jobs(json.dumps(_flux_job("ƒN8", "s-q-0", state="SCHED")))) == ["fN8"]


@pytest.mark.parametrize(
    ("allocation", "state", "kind"),
    [
        (dict(result="TIMEOUT", exception=_exc("timeout", "resource allocation expired")), "allocation TIMEOUT", FailureKind.TIMEOUT),
        (dict(result="CANCELED", exception=_exc("cancel", "")), "allocation CANCELED", FailureKind.CANCELLED),
        (dict(result="FAILED", exception=_exc("node-failure", "lost contact with job shell")), "allocation FAILED", FailureKind.NODE_LOST),
        # afterok on an allocation that failed: a fatal dependency exception; its elements never ran
        (dict(result="FAILED", exception=_exc("dependency", "dependency failed")), "allocation DEPENDENCY", None),
    ],
)  # fmt: skip
def test_an_allocation_that_ended_without_its_record(allocation, state, kind):
    from perfscale.sched.flux import element_states

    alloc = _flux_job("ƒM7", "s-p-0", **allocation)
    states = element_states("fM7", alloc, None, size=3)
    assert {(s.state, s.active, s.failure) for s in states.values()} == {(state, False, kind)}
    assert sorted(k[1] for k in states) == [0, 1, 2]


def test_flux_batch_argv_and_ids():
    from perfscale.sched.flux import flux_batch_argv, flux_jobs_argv, parse_flux_batch

    script = Path("/r/arrays/s-p-0.sh")
    assert flux_batch_argv(script, ["fA", "fB"], hold=True, after_any=["fC"]) == [
        "flux", "batch", "--urgency=hold", "--dependency=afterok:fA", "--dependency=afterok:fB",
        "--dependency=afterany:fC", "/r/arrays/s-p-0.sh",
    ]  # fmt: skip
    assert parse_flux_batch("ƒM7Zq9AKHno\n") == "fM7Zq9AKHno"  # the id as flux-batch(1) shows it
    assert parse_flux_batch("fM7Zq9AKHno\n") == "fM7Zq9AKHno"
    with pytest.raises(SchedulerCommandError, match="flux batch did not report a job id"):
        parse_flux_batch("flux-batch: ERROR: unsatisfiable request\n")
    assert flux_jobs_argv(["fA"]) == ["flux", "jobs", "-a", "-R", "-L", "1", "-c", "0", "--json", "fA"]


def test_perfscale_submit_status_cancel_on_flux(tmp_path: Path, commands):
    """`perfscale submit` on a Flux site: one `flux batch` allocation per array, afterok between stages, the id
    files poll maps arrays with; a poll is one `flux jobs` call for running allocations and none for those
    whose record the allocation wrote; `perfscale cancel` cancels allocations."""
    from perfscale.cli import main
    from perfscale.sched.submit import poll

    counter, listing = tmp_path / "next", tmp_path / "jobs.json"
    counter.write_text("1")
    listing.write_text(
        json.dumps({"jobs": [_flux_job("ƒB2", "two-q-0", state="DEPEND", dependencies=["afterok:fA1"])]})
    )
    log = commands(
        flux=f'case "$1" in batch) n=$(cat {counter}); echo $((n + 1)) > {counter}; '
        'if [ "$n" = 1 ]; then echo "ƒA$n"; else echo "ƒB$n"; fi;; '
        f"jobs) cat {listing};; cancel) true;; esac"
    )
    site = tmp_path / "tioga.yaml"
    site.write_text(_tioga(setup=[]).model_dump_json())
    run = tmp_path / "run"
    assert main(["submit", str(_two_stage_study(tmp_path)), "--site", str(site), "--run-dir", str(run)]) == 0
    jobs = json.loads((run / "arrays" / "jobs.json").read_text())
    assert [(j["name"], j["job_id"], j["elements"]) for j in jobs] == [
        ("two-p-0", "fA1", [[0], [1], [2]]),
        ("two-q-0", "fB2", [[3]]),
    ]
    assert (run / "arrays" / "two-p-0.flux-id").read_text() == "fA1\n"
    assert log.read_text().splitlines() == [
        f"flux batch {run}/arrays/two-p-0.sh",
        f"flux batch --dependency=afterok:fA1 {run}/arrays/two-q-0.sh",
    ]
    # the first allocation has ended and written its record (as its script does with `flux jobs --json`)
    (run / "arrays" / "two-p-0.flux.json").write_text(
        json.dumps(
            {"jobs": [_flux_job(f"ƒx{k}", f"two-p-0.{k}", result="COMPLETED", returncode=0) for k in (0, 2)]}
        )
    )
    states = poll(RunStore(run))
    assert {i: (s.state, s.active) for i, s in states.items()} == {
        0: ("COMPLETED", False),
        1: ("NOT_RUN", False),  # the record does not name it: it never started
        2: ("COMPLETED", False),
        3: ("DEPEND", True),
    }
    assert main(["cancel", str(run)]) == 0
    assert log.read_text().splitlines()[-2:] == [
        "flux jobs -a -R -L 1 -c 0 --json fB2",  # only the allocation without a record
        "flux cancel fA1 fB2",
    ]
    with pytest.raises(SchedulerCommandError, match="cannot cancel single elements"):
        make_scheduler(_tioga()).cancel(["fA1[0]"])


def test_flux_run_launcher_and_allocation_hosts(commands, monkeypatch: pytest.MonkeyPatch):
    site = _tioga()
    lay = Layout(nodes=2, ranks_per_node=4, cores_per_rank=16, gpus_per_rank=2)
    assert launch_line(site, lay) == [
        "flux", "run", "--nodes=2", "--ntasks=8", "--cores-per-task=16", "--gpus-per-task=2",
        "--setopt=cpu-affinity=per-task",
    ]  # fmt: skip
    assert launch_line(site, Layout(bind="none"))[-1] == "--setopt=cpu-affinity=off"
    assert launcher_for(site).pin(["t1", "t2"]) == ["--requires=host:t1,t2"]
    # inside `flux alloc`: the allocation's id and hosts (flux hostlist --expand instance)
    log = commands(flux='echo "tioga3 tioga4"')
    monkeypatch.delenv("FLUX_ENCLOSING_ID", raising=False)
    assert make_scheduler(site).allocation(site) is None
    monkeypatch.setenv("FLUX_ENCLOSING_ID", "ƒM7")
    assert make_scheduler(site).allocation(site) == ("fM7", ["tioga3", "tioga4"])
    assert log.read_text() == "flux hostlist --expand instance\n"


def test_flux_has_no_parsl_or_dask_pilot():
    from perfscale.engines.dask_engine import dask_cluster_config
    from perfscale.engines.parsl_engine import make_provider

    with pytest.raises(SpecError, match="Parsl has no provider for scheduler 'flux'"):
        make_provider(_tioga(), walltime_s=600)
    with pytest.raises(SpecError, match="dask-jobqueue needs one of lsf, pbs, slurm"):
        dask_cluster_config(_tioga())
