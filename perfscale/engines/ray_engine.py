"""The Ray engine: a local Ray session, or a Ray cluster started inside a batch allocation.

On a site with `scheduler: none`, `ray.init` starts Ray on this machine with `workers` CPUs. On a batch site
the engine runs inside an allocation (`salloc`, `sbatch`, `bsub -Is`...): the site's scheduler reads the
allocation's job id and hosts from its environment (`Scheduler.allocation`), `ray_cluster_commands` starts a
head on the allocation's first node and one worker on each other node, both through the site launcher
(`mpi.Launcher`: its line and its host pinning), and the driver connects to the head. Ray has no wheels for
ppc64le: Lassen-like sites are refused.

GPUs: an engine built for tasks of `task_gpus` GPUs (a GPU stage on a GPU site) gives each task
`num_gpus=task_gpus`. Ray keeps count of each node's GPUs (`--num-gpus` of `ray start`, `num_gpus` of a
local `ray.init`), assigns the task its ids and runs it in a fresh worker process (Ray's default
`max_calls=1` for GPU tasks); the task takes Ray's ids as the engine's (`ray.get_gpu_ids()` into
PERFSCALE_GPUS_ASSIGNED, perfscale.gpus.bound), so the vendor's variables always name what Ray gave it.

CPU tasks run on a pool of long-lived Ray actors (`ActorPool`: one per worker, `num_cpus=1`), as Ray Data
runs its map batches: what a task loads into its process, the inference model cache above all
(perfscale.llm.inference.cached_model), stays in that actor for the next task, so model residency is explicit
rather than an accident of Ray reusing worker processes. Actors start on their first call, so an engine
that runs nothing holds no CPUs. An actor whose process dies (`max_restarts=0`) fails its call at once
(`ActorDiedError`) and is replaced on its next one; `run_plan` records `node_lost` and applies the study's
retry policy, as on every other engine. GPU tasks are Ray tasks with `max_retries=0` (`WorkerCrashedError`
when their process dies); `ObjectRef.future()` gives the `concurrent.futures.Future` the runner waits on.

Offline and quiet (`ray_environment`):
- Ray 2.59+ turns token authentication on for a new local cluster, writes a token to ~/.ray/auth_token and
  logs a warning about it. Ray's gRPC servers listen on every interface whatever the node address, so
  authentication is worth keeping: perfscale sets `RAY_AUTH_MODE=token` with a fresh random `RAY_AUTH_TOKEN`
  for the session (unless `RAY_AUTH_MODE` is already set), which is authenticated, writes no file, and logs
  nothing. The cluster commands take the token from their environment, never from their arguments (which
  `ps` shows to every user of the node).
- usage statistics are off and no dashboard starts, so nothing is sent beyond the machine (or allocation).

A session that is already running in this process (a notebook, a test module) is used as it is and left
running.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from perfscale.engines.base import Engine
from perfscale.environ import environ
from perfscale.errors import SpecError
from perfscale.gpus import ASSIGNED_ENV
from perfscale.sched.base import scheduler_class
from perfscale.sched.mpi import Layout, launch_line, launcher_for
from perfscale.spec.site import Site

logger = logging.getLogger(__name__)

# Ports are taken below Linux's ephemeral range (32768-60999), so the kernel never hands one of them to an
# outgoing connection between the moment the commands are written and the moment Ray binds it.
PORT_FLOOR, PORT_CEILING = 10000, 32768
_NAMED_PORTS = 8
HEAD_START_TIMEOUT_S = 180.0


def _refuse_arch(site: Site) -> None:
    if site.arch == "ppc64le":
        raise SpecError(
            f"site {site.name!r} is ppc64le: Ray has no wheels for it; use the parsl or dask engine there"
        )


def ray_environment(token: str | None = None) -> dict[str, str]:
    """Environment for Ray processes and the driver: token auth with a session token, no usage stats.

    An explicit `RAY_AUTH_MODE` of the user (e.g. `disabled`, or `token` with their own token file) wins.
    """
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if "RAY_AUTH_MODE" in os.environ:
        return env
    token = token or os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


@dataclass(frozen=True)
class RayPorts:
    """The fixed ports of one job's Ray cluster (the same on every node of the job)."""

    gcs: int
    ray_client_server: int
    node_manager: int
    object_manager: int
    dashboard_agent_grpc: int
    dashboard_agent_listen: int
    metrics_export: int
    runtime_env_agent: int
    min_worker: int
    max_worker: int


def ray_ports(job_id: str, workers_per_node: int) -> RayPorts:
    """A block of ports for the job `job_id`, derived from the id alone.

    Two jobs that share a node (or two users on one node) get different blocks without talking to each
    other, and the commands can be written before any node runs. Consecutive job ids get consecutive blocks,
    so jobs submitted together never clash; two ids clash only when they differ by a multiple of the number
    of blocks (316 up to 32 workers per node, 284 for 36, 189 for 56). Each block holds 8 named ports and
    2 x workers (at least 64) worker ports: Ray starts more worker processes than CPUs now and then.
    """
    worker_ports = max(64, 2 * workers_per_node)
    size = -(-(_NAMED_PORTS + worker_ports) // 8) * 8
    slots = (PORT_CEILING - PORT_FLOOR) // size
    if slots < 1:
        raise SpecError(f"{workers_per_node} workers per node need more Ray ports than a block can hold")
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    base = PORT_FLOOR + (number % slots) * size
    return RayPorts(*range(base, base + _NAMED_PORTS), base + _NAMED_PORTS, base + size - 1)


@dataclass(frozen=True)
class RayClusterCommands:
    """How to start a job's Ray cluster: argument lists (never shell strings) and their environment."""

    head: list[str]
    workers: list[str] | None  # None for a one-node allocation: the head runs the tasks
    address: str  # what the driver passes to ray.init
    ports: RayPorts
    env: dict[str, str] = field(repr=False)  # token and settings; passed to the launchers, not in argv


def _ray_start(site: Site, ports: RayPorts, temp_dir: str) -> list[str]:
    ray = str(Path(sys.executable).with_name("ray"))  # the ray of this interpreter (shared file system)
    return [
        ray,
        "start",
        "--block",
        f"--num-cpus={site.workers}",
        f"--num-gpus={site.gpus_per_node}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        f"--node-manager-port={ports.node_manager}",
        f"--object-manager-port={ports.object_manager}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
        f"--metrics-export-port={ports.metrics_export}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--min-worker-port={ports.min_worker}",
        f"--max-worker-port={ports.max_worker}",
    ]


def ray_cluster_commands(
    site: Site,
    nodes: int,
    *,
    job_id: str,
    hosts: list[str],
    head_ip: str | None = None,
    token: str | None = None,
) -> RayClusterCommands:
    """Head and worker start commands for a Ray cluster on `nodes` nodes of the allocation `job_id`.

    `hosts` are the allocation's compute nodes, head first. The head runs on `hosts[0]` with `site.workers`
    CPUs; one worker runs on each other node. Ports come from `ray_ports(job_id)`; the temporary folder is
    per user and job (`/tmp/ray-<uid>-<job>`), as Ray's default /tmp/ray belongs to whoever made it first.
    """
    _refuse_arch(site)
    if not scheduler_class(site.scheduler).batch:
        raise SpecError(f"site {site.name!r} has no scheduler: the ray engine starts Ray locally there")
    if len(hosts) != nodes or nodes < 1:
        raise SpecError(f"{nodes} nodes requested but the allocation lists {len(hosts)}: {' '.join(hosts)}")
    head_ip = head_ip or socket.gethostbyname(hosts[0])
    ports = ray_ports(job_id, site.workers)
    start = _ray_start(site, ports, f"/tmp/ray-{os.getuid()}-{job_id}")

    def launch(count: int) -> list[str]:
        layout = Layout(nodes=count, cores_per_rank=site.cores, gpus_per_rank=site.gpus_per_node, bind="none")
        return launch_line(site, layout)

    # jsrun and lrun have no host option: they fill the allocation's hosts in order, and as the head's
    # resource set holds a whole node, the workers' sets go to the others
    pin = launcher_for(site).pin
    head = [
        *launch(1),
        *pin(hosts[:1]),
        *start[:3],
        "--head",
        f"--node-ip-address={head_ip}",
        f"--port={ports.gcs}",
        f"--ray-client-server-port={ports.ray_client_server}",
        "--include-dashboard=false",
        *start[3:],
    ]
    address = f"{head_ip}:{ports.gcs}"
    workers = None
    if nodes > 1:
        workers = [*launch(nodes - 1), *pin(hosts[1:]), *start[:3], f"--address={address}"]
        workers += start[3:]
    return RayClusterCommands(head, workers, address, ports, ray_environment(token))


def allocation(site: Site) -> tuple[str, list[str]]:
    """The job id and compute hosts of the allocation this process runs in (head host first), read by the
    site's scheduler from its environment variables (`Scheduler.allocation`)."""
    found = scheduler_class(site.scheduler)().allocation(site)
    if found is None:
        raise SpecError(
            f"the ray engine on {site.scheduler} site {site.name!r} runs inside an allocation (salloc, "
            "sbatch, bsub...); outside one use array mode (perfscale submit) or the dask engine, which "
            "submits its own jobs"
        )
    return found


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray head exited with status {proc.returncode} before it listened")
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on {host}:{port} within {timeout_s:.0f} s")


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _apply_environment(env: dict[str, str]) -> None:
    """Put `env` in this process's environment, for the driver and every process it starts."""
    os.environ.update(env)
    if "ray._raylet" in sys.modules:
        # Ray read its settings when it was imported: make it read them again (as Ray itself does when it
        # turns token authentication on)
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _call_on_gpus(fn: Callable[..., Any], *args: Any) -> Any:
    """A GPU task: the ids Ray assigned it are the task's (perfscale.gpus.ASSIGNED_ENV)."""
    import ray

    with environ({ASSIGNED_ENV: ",".join(str(i) for i in ray.get_gpu_ids())}):
        return fn(*args)


class _Worker:
    """A long-lived worker process (a Ray actor): the modules and models its calls load stay for its life."""

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class ActorPool:
    """Up to `size` actors of `num_cpus=1`, each fed by a driver thread of its own from one queue of calls.

    A thread starts its actor on its first call and waits for each call's result (`ray.get`), so a call goes
    to whichever actor is free. An actor that dies fails its call with Ray's `RayActorError` and its thread
    starts a new actor for the next call. `close` kills the actors: calls in flight or still queued fail.
    """

    def __init__(self, size: int):
        import ray

        self._cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_Worker)
        self._calls: queue.Queue[_Call | None] = queue.Queue()
        self._actors: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"ray-actor-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._calls.put((future, fn, args))
        return future

    def _start_actor(self) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError("the Ray engine was shut down before this call ran")
            actor = self._cls.remote()
            self._actors.add(actor)
            return actor

    def _serve(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        actor = None
        while (item := self._calls.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                actor = actor or self._start_actor()
                future.set_result(ray.get(actor.call.remote(fn, *args)))
            except RayActorError as exc:  # its process died: the next call gets a new actor
                logger.warning("Ray actor died: %s", str(exc).splitlines()[0])
                with self._lock:
                    self._actors.discard(actor)
                actor = None
                future.set_exception(exc)
            except Exception as exc:  # the runner judges what it was
                future.set_exception(exc)

    def close(self) -> None:
        import ray

        with self._lock:
            self._closed, actors = True, list(self._actors)
        for _ in self._threads:
            self._calls.put(None)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        for thread in self._threads:
            thread.join(timeout=30)


class RayEngine(Engine):
    name = "ray"
    binds_gpus = True

    def __init__(self, site: Site, run_root: Path, workers: int | None = None, task_gpus: int = 0):
        _refuse_arch(site)
        super().__init__(site, run_root, workers, task_gpus)
        self._owned = False
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._remote: Any = None
        self._pool: ActorPool | None = None

    def start(self) -> None:
        if not _ray_running():
            _apply_environment(ray_environment())
            self._owned = True
            if not scheduler_class(self.site.scheduler).batch:
                self._start_local()
            else:
                self._start_in_allocation()
        import ray

        if self.task_gpus:
            self._check_gpus(ray.cluster_resources().get("GPU", 0))
            self._remote = ray.remote(num_cpus=1, num_gpus=self.task_gpus, max_retries=0)(_call_on_gpus)
        else:
            # a session started elsewhere may have fewer CPUs than workers: an actor beyond them never starts
            cpus = int(ray.cluster_resources().get("CPU", 0))
            self._pool = ActorPool(self.workers if self._owned else max(1, min(self.workers, cpus)))

    def _check_gpus(self, have: float) -> None:
        """A task asking Ray for more GPUs than any node has would wait for ever: say so instead."""
        if have < self.task_gpus:
            raise SpecError(
                f"site {self.site.name!r}: tasks take {self.task_gpus} GPUs but the Ray session has {have:g} "
                f"(a session started elsewhere in this process? start it with num_gpus="
                f"{self.site.gpus_per_node}, or let the engine start it)"
            )

    def _start_local(self) -> None:
        import ray

        ray.init(
            num_cpus=self.workers,
            num_gpus=self.site.gpus_per_node,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env={"env_vars": dict(self.site.env)} if self.site.env else None,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )

    def _start_in_allocation(self) -> None:
        import ray

        job_id, hosts = allocation(self.site)
        cmds = ray_cluster_commands(self.site, len(hosts), job_id=job_id, hosts=hosts)
        log_dir = self.run_root / "ray"
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._launch(cmds.head, log_dir / "head.log", cmds.env)
            host, port = cmds.address.rsplit(":", 1)
            _wait_for_port(host, int(port), self._procs[0], HEAD_START_TIMEOUT_S)
            if cmds.workers:
                self._launch(cmds.workers, log_dir / "workers.log", cmds.env)
            ray.init(address=cmds.address, logging_level=logging.WARNING, log_to_driver=False)
        except BaseException:
            self._stop_processes()
            raise

    def _launch(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        if shutil.which(argv[0]) is None:
            raise SpecError(f"site {self.site.name!r}: launcher {argv[0]!r} is not on PATH here")
        out = log.open("ab")
        self._logs.append(out)
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        logger.info("started %s: pid %d, log %s", shlex.join(argv), proc.pid, log)
        self._procs.append(proc)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        assert self._remote is not None, "engine not started"
        return self._remote.remote(fn, *args).future()

    def shutdown(self) -> None:
        import ray

        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._owned:
            ray.shutdown()
            self._owned = False
        self._stop_processes()
        self._remote = None

    def _stop_processes(self) -> None:
        # SIGTERM: srun and jsrun pass it to `ray start --block`, which stops its node's Ray processes
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logger.info("%s (pid %d): rc %s", shlex.join(map(str, proc.args)), proc.pid, proc.returncode)
        for out in self._logs:
            out.close()
        self._procs, self._logs = [], []
