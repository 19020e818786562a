"""A real one-node Slurm on localhost for the tests: munged, MariaDB, slurmdbd, slurmctld and slurmd.

Everything lives in one temporary folder with its own ports and sockets, so nothing in /etc is read and a
Slurm already running on the machine is left alone. Every Slurm command finds the cluster through
`SLURM_CONF` (the fixture sets it for the whole session); slurmdbd reads `slurmdbd.conf` from the same folder.

    from tests.slurm_cluster import slurm  # noqa: F401  (the session fixture)

    def test_x(slurm):  # a SlurmCluster
        slurm.run(["sinfo"])

Why each daemon:
- munged: Slurm 22.05 (Debian 12) authenticates every RPC with MUNGE (auth/none is gone).
- slurmdbd + MariaDB: `sacct` needs accounting storage; without slurmdbd it answers "Slurm accounting
  storage is disabled", and sacct is what perfscale polls on real clusters. MariaDB runs on an empty data
  folder with --skip-grant-tables (no mariadb-install-db: start-up takes a fraction of a second) and
  listens on 127.0.0.1 only.
- slurmctld + slurmd: the controller and the one node (`slurmd -N localhost`), proctrack/linuxproc and
  task/none (no cgroups in containers or CI VMs).

The daemons must run as root (slurmd starts jobs as their users; munged and MariaDB run as root here).
Without root or without the binaries (scripts/setup.sh installs them on Debian) the fixture skips, unless
PERFSCALE_REQUIRE_SLURM=1 turns that into a failure (CI). See docs/clusters.md.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sacct", "squeue", "scancel", "scontrol", "sinfo", "munge")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
PARTITION = "debug"
SECOND_PARTITION = "second"  # the same node again: stages placed in another partition (docs/placement.md)
NODE = "localhost"
MAX_ARRAY_SIZE = 1001  # largest array index 1000
MAX_JOB_COUNT = 50000
KILL_WAIT_S = 5  # SIGTERM -> SIGKILL at the time limit or on scancel
MAX_TIME = "30:00"  # partition MaxTime
TEST_SLOTS = 6  # CPUs the node declares for the tests (at least): sleeping test elements overlap


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_shape() -> tuple[int, int]:
    """CPUs and RealMemory (MB) as slurmd sees this machine (`slurmd -C`)."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True).stdout
    cpus = re.search(r"CPUs=(\d+)", out)
    mem = re.search(r"RealMemory=(\d+)", out)
    return (int(cpus.group(1)) if cpus else os.cpu_count() or 1, int(mem.group(1)) if mem else 1024)


@dataclass
class SlurmCluster:
    """A running test cluster: its folder, config file, node shape and the processes it started."""

    root: Path
    conf: Path
    cpus: int
    memory_mb: int
    partition: str = PARTITION
    max_time: str = MAX_TIME
    pids: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    startup_s: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, argv: list[str], check: bool = True, timeout: float = 60) -> str:
        """Run a Slurm client command against this cluster; returns stdout."""
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def log(self, daemon: str, lines: int = 40) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def site_yaml(self, name: str = "testslurm", **overrides: object) -> str:
        """A perfscale site file for this cluster (scheduler slurm, launcher srun, its one partition);
        `overrides` replace top-level fields (e.g. max_workers=2)."""
        fields: dict[str, object] = {
            "name": name,
            "description": "one-node Slurm on localhost started by tests/slurm_cluster.py",
            "scheduler": "slurm",
            "launcher": "srun",
            "engine": "parsl",
            "cores_per_node": self.cpus,
            "memory_gb_per_node": self.memory_mb // 1024,
            "max_workers": self.cpus,
            "partitions": {
                self.partition: {"max_nodes": 1, "max_walltime": f"00:{self.max_time}", "default": True},
                SECOND_PARTITION: {"max_nodes": 1, "max_walltime": f"00:{self.max_time}"},
            },
            "limits": {
                "max_array_size": MAX_ARRAY_SIZE,
                "max_jobs_in_queue": MAX_JOB_COUNT,
                "max_nodes": 1,
                "max_walltime": f"00:{self.max_time}",
            },
        }
        fields.update(overrides)
        return yaml.safe_dump(fields, sort_keys=False)

    def write_site(self, folder: Path, **overrides: object) -> Path:
        """`site_yaml` written to `folder`/testslurm.yaml: its path."""
        path = Path(folder) / "testslurm.yaml"
        path.write_text(self.site_yaml(**overrides))
        return path


SLURM_CONF = """\
# perfscale test cluster (tests/slurm_cluster.py): one node on localhost, everything under {root}
ClusterName=perfscaletest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/run/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
MailProg=/bin/true
SwitchType=switch/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={root}/run/munge.socket
JobCompType=jobcomp/none
ReturnToService=2
MaxArraySize={max_array_size}
MaxJobCount={max_job_count}
MinJobAge=600
KillWait={kill_wait}
OverTimeLimit=0
InactiveLimit=0
SlurmdTimeout=300
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0
TmpFS={root}/tmp
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime={max_time} State=UP
PartitionName={second_partition} Nodes={node} Default=NO MaxTime={max_time} State=UP
"""

SLURMDBD_CONF = """\
AuthType=auth/munge
AuthInfo=socket={root}/run/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
LogFile={root}/log/slurmdbd.log
PidFile={root}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=root
StorageLoc=slurm_acct_db
"""


class ClusterStartError(RuntimeError):
    pass


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ClusterStartError(f"{what} not ready after {timeout_s:.0f} s\n{logs()}")


def _ok(argv: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(argv, capture_output=True, env=env, timeout=30).returncode == 0


class _Launcher:
    """Starts the daemons in order and remembers their pids for teardown."""

    def __init__(self, cluster: SlurmCluster):
        self.c = cluster

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.c.root / "log" / f"{name}.out", "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.c.env, start_new_session=True
            )
        self.c.pids[name] = proc.pid
        self.c.procs[name] = proc

    def munge(self) -> None:
        r = self.c.root
        key = r / "etc" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        subprocess.run(
            [
                _which("munged"),
                f"--socket={r}/run/munge.socket",
                f"--key-file={key}",
                f"--pid-file={r}/run/munged.pid",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/run/munged.seed",
            ],
            check=True,
            capture_output=True,
        )
        self.c.pids["munged"] = int((r / "run" / "munged.pid").read_text())

    def mariadb(self, port: int) -> None:
        r = self.c.root
        (r / "db").mkdir()
        self._spawn(
            "mariadbd",
            [
                _which("mariadbd") or _which("mysqld"),
                "--no-defaults",
                f"--datadir={r}/db",
                f"--socket={r}/run/mysql.sock",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-grant-tables",
                f"--pid-file={r}/run/mariadbd.pid",
                f"--log-error={r}/log/mariadbd.log",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--skip-log-bin",
            ],
        )

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait_for("MariaDB", up, 30, lambda: self.c.log("mariadbd"))

    def slurmdbd(self, port: int) -> None:
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait_for("slurmdbd", up, 60, lambda: self.c.log("slurmdbd"))

    def slurmctld(self) -> None:
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
        _wait_for(
            "slurmctld", lambda: _ok(["scontrol", "ping"], self.c.env), 60, lambda: self.c.log("slurmctld")
        )

    def slurmd(self) -> None:
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", NODE])

    def node_idle(self, timeout_s: float = 60) -> None:
        """Wait until sinfo shows the node idle; resume it when it comes up drained or down."""
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            # one line per partition the node is in
            state = " ".join(
                set(self.c.run(["sinfo", "-h", "-N", "-n", NODE, "-o", "%T"], check=False).split())
            )
            if state == "idle":
                return
            if any(s in state for s in ("drain", "down")):
                self.c.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], check=False)
            time.sleep(0.2)
        node = self.c.run(["scontrol", "show", "node", NODE], check=False)
        raise ClusterStartError(
            f"node {NODE} is {state!r}, not idle, after {timeout_s:.0f} s\n{node}\n{self.c.log('slurmd')}"
        )


def missing_requirements() -> str | None:
    """Why this machine cannot run the test cluster (None when it can)."""
    if os.geteuid() != 0:
        return "the test Slurm needs root (slurmd starts jobs as their users)"
    missing = [
        d for d in (*DAEMONS, *CLIENTS) if not _which(d) and not (d == "mariadbd" and _which("mysqld"))
    ]
    if missing:
        return f"Slurm test cluster: missing {', '.join(missing)} (run scripts/setup.sh)"
    return None


def start_cluster(root: Path, cpus: int | None = None) -> SlurmCluster:
    """Write the configuration under `root` and start every daemon; returns when the node is idle.

    `cpus`: CPUs the node declares (SlurmdParameters=config_overrides lets it declare more than it has);
    default: what `slurmd -C` finds.
    """
    t0 = time.monotonic()
    for sub in ("etc", "run", "log", "state", "spool", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged wants its socket's folders searchable by all
    real_cpus, memory_mb = _node_shape()
    cpus = cpus or real_cpus
    ports = {"ctld_port": _free_port(), "slurmd_port": _free_port(), "dbd_port": _free_port()}
    db_port = _free_port()
    conf = root / "etc" / "slurm.conf"
    values = {
        "root": root,
        "node": NODE,
        "cpus": cpus,
        "memory_mb": memory_mb,
        "partition": PARTITION,
        "second_partition": SECOND_PARTITION,
        "max_time": MAX_TIME,
        "max_array_size": MAX_ARRAY_SIZE,
        "max_job_count": MAX_JOB_COUNT,
        "kill_wait": KILL_WAIT_S,
        "db_port": db_port,
        **ports,
    }
    conf.write_text(SLURM_CONF.format(**values))
    dbd_conf = root / "etc" / "slurmdbd.conf"
    dbd_conf.write_text(SLURMDBD_CONF.format(**values))
    dbd_conf.chmod(0o600)  # slurmdbd refuses a readable slurmdbd.conf
    (root / "plugstack.conf").write_text("")
    cluster = SlurmCluster(root=root, conf=conf, cpus=cpus, memory_mb=memory_mb)
    launch = _Launcher(cluster)
    try:
        launch.munge()
        launch.mariadb(db_port)
        launch.slurmdbd(ports["dbd_port"])
        launch.slurmctld()
        launch.slurmd()
        launch.node_idle()
        # sacct answers only once the controller has registered the cluster with slurmdbd
        _wait_for(
            "sacct",
            lambda: _ok(["sacct", "-n", "-X", "-S", "now-1minute"], cluster.env),
            60,
            lambda: cluster.log("slurmctld"),
        )
    except BaseException:
        stop_cluster(cluster)
        raise
    cluster.startup_s = time.monotonic() - t0
    return cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone(cluster: SlurmCluster, name: str, pid: int) -> bool:
    proc = cluster.procs.get(name)
    if proc is not None:
        return proc.poll() is not None  # reaps our own child
    return not _alive(pid)


def stop_cluster(cluster: SlurmCluster, timeout_s: float = 20) -> None:
    """Cancel leftover jobs, then SIGTERM every daemon this cluster started (by pid, never by name), wait
    for them, and SIGKILL the ones still there after `timeout_s`."""
    if "slurmctld" in cluster.pids and _alive(cluster.pids["slurmctld"]):
        cluster.run(["scancel", "--full", "--user=root"], check=False, timeout=15)
    running = {n: pid for n, pid in cluster.pids.items() if _alive(pid)}
    for name in reversed(DAEMONS):
        if name in running:
            os.kill(running[name], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        running = {n: pid for n, pid in running.items() if not _gone(cluster, n, pid)}
        time.sleep(0.05)
    for name, pid in running.items():
        os.kill(pid, signal.SIGKILL)
        if name in cluster.procs:
            cluster.procs[name].wait()


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A running one-node Slurm for the session; SLURM_CONF points at it while it runs."""
    why = missing_requirements()
    if why:
        if os.environ.get("PERFSCALE_REQUIRE_SLURM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="perfscale-slurm-"))
    cluster = start_cluster(root, cpus=max(TEST_SLOTS, _node_shape()[0]))
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(cluster.conf))
    try:
        yield cluster
    finally:
        mp.undo()
        stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)
