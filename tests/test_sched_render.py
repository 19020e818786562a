"""Array mode up to the scheduler's edge: packing, chunking, limits, rendered scripts, MPI launch lines."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from perfscale.errors import SpecError
from perfscale.plan import build_plan
from perfscale.sched.arrays import pack, stage_arrays
from perfscale.sched.mpi import Layout, launch_line
from perfscale.sched.render import lsf_walltime, render_array
from perfscale.spec import load_site
from perfscale.spec.study import Study


def _tasks(n: int, walltime: str = "00:10:00", expected: str | None = None, **resources):
    res = {"walltime": walltime, **resources}
    if expected:
        res["expected_runtime"] = expected
    study = Study.model_validate(
        {
            "name": "s",
            "stages": {"p": {"kind": "noop", "grid": {"product": {"i": list(range(n))}}, "resources": res}},
        }
    )
    return build_plan(study).of_stage("p")


def test_tasks_without_estimates_get_one_element_each():
    elements = pack(_tasks(5), limit_s=86400)
    assert [e.indices for e in elements] == [(0,), (1,), (2,), (3,), (4,)]
    assert elements[0].walltime_s == 600


def test_packing_by_expected_runtime_fits_the_limit():
    # 10 tasks expecting 60 s with a 120 s walltime: an element of k tasks asks for 60k + 60 s
    elements = pack(_tasks(10, walltime="02:00", expected="01:00"), limit_s=330)
    assert [len(e.indices) for e in elements] == [4, 4, 2]
    assert [e.walltime_s for e in elements] == [300, 300, 180]
    assert sorted(i for e in elements for i in e.indices) == list(range(10))


def test_a_task_longer_than_the_partition_is_an_error():
    with pytest.raises(SpecError, match="more than the partition limit"):
        pack(_tasks(1, walltime="02:00:00"), limit_s=1800)


def test_chunks_respect_max_array_size():
    quartz = load_site("quartz")
    arrays = stage_arrays("s", "p", _tasks(2500), quartz)
    assert [a.size for a in arrays] == [1001, 1001, 498]
    assert [a.name for a in arrays] == ["s-p-0", "s-p-1", "s-p-2"]
    assert all(a.throttle == 100 for a in arrays) and arrays[0].partition == "pbatch"


def test_requests_above_limits_fail_before_submission():
    quartz = load_site("quartz")
    with pytest.raises(
        SpecError, match="partition 'pdebug': walltime 01:00:00 requested, the limit is 00:30:00"
    ):
        stage_arrays("s", "p", _tasks(2, walltime="01:00:00"), quartz, partition="pdebug")
    with pytest.raises(SpecError, match="300 nodes requested, the limit is 256"):
        stage_arrays("s", "p", _tasks(1, nodes=300), quartz)
    with pytest.raises(SpecError, match="no partition/queue 'gpu'"):
        stage_arrays("s", "p", _tasks(1), quartz, partition="gpu")
    with pytest.raises(SpecError, match="1 GPUs per node requested, nodes have 0"):
        stage_arrays("s", "p", _tasks(1, gpus=1), quartz)


# The loop every array element runs (launchers/element.sh.j2), with each scheduler's requeue command and,
# where the batch shell is off the compute node, the launcher before each task.
ELEMENT_BODY = """\
child=""
caught=""
forward() {
  caught=$1
  if [ -n "$child" ]; then kill -s "$1" "$child" 2>/dev/null || true; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
from=$(cat "$resume" 2>/dev/null || true)
status=0
for index in $indices; do
  if [ -n "$from" ]; then
    [ "$index" = "$from" ] || continue
    from=""
  fi
  [ -n "$caught" ] && break
  @LAUNCH@@PYTHON@ -m perfscale.cli task run @RUN@/plan.parquet "$index" &
  child=$!
  while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=""
  [ "$rc" -eq 0 ] || status=$rc
  [ -z "$caught" ] && continue
  if [ "$caught" = USR1 ] && @PYTHON@ -m perfscale.sched.requeue @RUN@/plan.parquet "$index"; then
    echo "$index" > "$resume"
    @REQUEUE@
  fi
  break
done
exit "$status"
"""


def element_body(requeue: str, launch: str = "") -> str:
    return ELEMENT_BODY.replace("@REQUEUE@", requeue).replace("@LAUNCH@", launch)


EXPECTED_SBATCH = """\
#!/bin/bash
# perfscale array job s-p-0: stage p, 3 elements
#SBATCH --job-name=s-p-0
#SBATCH --array=0-2%3
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=2048M
#SBATCH --time=00:10:00
#SBATCH --partition=pdebug
#SBATCH --account='bank; rm -rf ~'
#SBATCH --output=@RUN@/logs/s-p-0-%A_%a.out
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
set -u
module load gcc/10.3.1
export OMP_PROC_BIND=close
export PERFSCALE_ELEMENT="slurm job ${SLURM_ARRAY_JOB_ID}[${SLURM_ARRAY_TASK_ID}]"
export PERFSCALE_ELEMENT_DEADLINE=$(($(date +%s) + 600))
indices=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" @RUN@/arrays/s-p-0.idx)
resume=@RUN@/arrays/s-p-0.idx."$SLURM_ARRAY_TASK_ID".resume
""" + element_body('scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"')


def test_sbatch_script_line_by_line(tmp_path):
    import sys

    quartz = load_site("quartz")
    tasks = _tasks(3, cores=4, memory_gb=2)
    (job,) = stage_arrays("s", "p", tasks, quartz, partition="pdebug", account="bank; rm -rf ~")
    rendered = render_array(job, quartz, tmp_path)
    expected = EXPECTED_SBATCH.replace("@RUN@", str(tmp_path.resolve())).replace("@PYTHON@", sys.executable)
    assert rendered.script.splitlines() == expected.splitlines()
    assert rendered.index_file == "0\n1\n2\n"


def test_elements_of_a_stage_past_compact_every_pack_their_shards(tmp_path):
    """With `pack_every` (render_arrays passes the site's compact_every for stages of at least that many
    tasks) the element packs its tasks' loose shards every 4 tasks and after its last, the indices on stdin
    (launchers/element.sh.j2); a failed packing does not change the element's status. Checked by bash -n."""
    import sys

    quartz = load_site("quartz")
    (job,) = stage_arrays("s", "p", _tasks(3, cores=4, memory_gb=2), quartz, partition="pdebug")
    plain = render_array(job, quartz, tmp_path).script.splitlines()
    packing = render_array(job, quartz, tmp_path, pack_every=4).script.splitlines()
    command = f"{sys.executable} -m perfscale.cli task pack {tmp_path.resolve()}/plan.parquet"
    expected = list(plain)
    at = expected.index("status=0") + 1
    expected[at:at] = [
        "ran=0",
        "pack() {",
        f"  printf '%s\\n' $indices | {command} || echo \"perfscale: the element's shards stay loose\" >&2",
        "}",
    ]
    at = expected.index('  [ "$rc" -eq 0 ] || status=$rc') + 1
    expected[at:at] = ["  ran=$((ran + 1))", '  [ -z "$caught" ] && [ $((ran % 4)) -eq 0 ] && pack']
    at = expected.index('exit "$status"')
    expected[at:at] = ['[ -z "$caught" ] && [ "$ran" -ge 2 ] && [ $((ran % 4)) -ne 0 ] && pack']
    assert packing == expected
    script = tmp_path / "element.sh"
    script.write_text("\n".join(packing) + "\n")
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


# Expected from the LSF documentation: -J "name[1-N]%K" array with a throttle, -nnodes (CSM), -W [hh:]mm,
# -q queue, -G user group (bank), -o with %J (job id) and %I (array index), -wa/-wt warning signal in minutes,
# $LSB_JOBINDEX counting from 1; on Lassen-like machines the batch script runs on a launch node, so each
# task is started on a compute node through jsrun.
EXPECTED_BSUB = """\
#!/bin/bash
# perfscale array job s-p-0: stage p, 2 elements
#BSUB -J "s-p-0[1-2]%2"
#BSUB -nnodes 1
#BSUB -W 0:10
#BSUB -q pdebug
#BSUB -o @RUN@/logs/s-p-0-%J_%I.out
#BSUB -wa USR1 -wt 2
#BSUB -Q "75"
set -u
module load cuda/11.8.0
export PERFSCALE_ELEMENT="lsf job ${LSB_JOBID}[${LSB_JOBINDEX}]"
export PERFSCALE_ELEMENT_DEADLINE=$(($(date +%s) + 600))
indices=$(sed -n "${LSB_JOBINDEX}p" @RUN@/arrays/s-p-0.idx)
resume=@RUN@/arrays/s-p-0.idx."$LSB_JOBINDEX".resume
""" + element_body(
    "exit 75",
    launch="jsrun --nrs=1 --tasks_per_rs=1 --cpu_per_rs=4 --gpu_per_rs=1 --rs_per_host=1 --bind=none ",
)


def test_bsub_script_line_by_line(tmp_path):
    import sys

    lassen = load_site("lassen")
    (job,) = stage_arrays("s", "p", _tasks(2, cores=4, gpus=1), lassen, partition="pdebug")
    rendered = render_array(job, lassen, tmp_path)
    expected = EXPECTED_BSUB.replace("@RUN@", str(tmp_path.resolve())).replace("@PYTHON@", sys.executable)
    assert rendered.script.splitlines() == expected.splitlines()


@pytest.mark.parametrize(("seconds", "text"), [(60, "0:01"), (61, "0:02"), (3600, "1:00"), (43200, "12:00")])
def test_lsf_walltime(seconds, text):
    assert lsf_walltime(seconds) == text


def test_launch_lines():
    quartz, lassen, local = load_site("quartz"), load_site("lassen"), load_site("local")
    lay = Layout(nodes=2, ranks_per_node=4, cores_per_rank=9)
    assert launch_line(quartz, lay) == [
        "srun",
        "--nodes=2",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--cpus-per-task=9",
        "--cpu-bind=cores",
    ]
    gpu = Layout(nodes=2, ranks_per_node=4, cores_per_rank=10, gpus_per_rank=1)
    assert launch_line(lassen, gpu) == [
        "jsrun",
        "--nrs=8",
        "--tasks_per_rs=1",
        "--cpu_per_rs=10",
        "--gpu_per_rs=1",
        "--rs_per_host=4",
        "--bind=packed:10",
    ]
    assert launch_line(lassen, gpu, launcher="lrun") == ["lrun", "-N2", "-T4", "--gpus_per_task=1"]
    assert launch_line(local, Layout(ranks_per_node=2, bind="none")) == [
        "mpirun",
        "-n",
        "2",
        "--map-by",
        "ppr:2:node:PE=1",
        "--bind-to",
        "none",
    ]
    with pytest.raises(SpecError, match="exceed the 36 cores"):
        launch_line(quartz, Layout(ranks_per_node=4, cores_per_rank=10))
    with pytest.raises(SpecError, match="exceed the 4 GPUs"):
        launch_line(lassen, Layout(ranks_per_node=8, gpus_per_rank=1))


def test_hostile_values_stay_quoted(tmp_path):
    quartz = load_site("quartz").model_copy(update={"env": {"X": "$(touch /tmp/pwned)"}})
    (job,) = stage_arrays("s", "p", _tasks(1), quartz, account="a b")
    script = render_array(job, quartz, tmp_path / "my run").script
    assert "export X='$(touch /tmp/pwned)'" in script
    assert "#SBATCH --account='a b'" in script
    line = next(ln for ln in script.splitlines() if "task run" in ln)
    assert shlex.split(line)[5].endswith("my run/plan.parquet")
