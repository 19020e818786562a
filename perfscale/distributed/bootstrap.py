"""torch.distributed started from MPI: ranks, rendezvous address and port, backend, timeouts.

- rank and world size come from MPI's COMM_WORLD; the local rank from a shared-memory split of it (the ranks
  that share a node);
- MASTER_ADDR is rank 0's address, chosen by rank 0 and broadcast over MPI: 127.0.0.1 when every rank is on
  one node, otherwise the address of rank 0's interface that routes to another rank's node (a UDP socket
  "connected" to that node: no packet is sent), falling back to the addresses of its fully qualified name.
  `hostname -I` is never used: it is missing on some systems and lists interfaces in no useful order;
- MASTER_PORT is derived from the task key and the job id (two tasks on one node get different ports), and
  rank 0 moves on to the next candidate when the port is taken (EADDRINUSE) before broadcasting it;
- gloo on CPU, NCCL when the task asks for GPUs (device = the local rank's GPU);
- MPI's world size must equal the ranks the task asked for: a launcher that starts N singletons fails here;
- the store connection and every collective have timeouts; the process group is destroyed on the way out;
- while the session is open RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT are
  set as torchrun sets them (DeepSpeed reads them), and put back afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from perfscale.environ import environ
from perfscale.errors import FailureKind, PerfscaleError, TaskFailure

log = logging.getLogger(__name__)

JOB_ID_VARS = ("SLURM_JOB_ID", "LSB_JOBID", "PBS_JOBID", "FLUX_JOB_ID")
PORT_LOW, PORT_SPAN = 20000, 30000
PORT_TRIES = 8
INIT_TIMEOUT_S = 120.0
COLLECTIVE_TIMEOUT_S = 300.0


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise PerfscaleError(
            "mpi4py is not installed; multi-rank tasks need it: pip install 'perfscale[mpi]' (with an MPI "
            "such as Debian's openmpi-bin and libopenmpi-dev)"
        ) from exc
    return MPI


def mpi_world() -> tuple[int, int]:
    """(rank, world size) of this process in MPI's COMM_WORLD (0, 1 for a process started without mpirun)."""
    comm = _mpi().COMM_WORLD
    return comm.Get_rank(), comm.Get_size()


def job_id(env: dict[str, str] | None = None) -> str:
    """The scheduler's job id, or this launch's parent process id on a machine without a scheduler."""
    env = os.environ if env is None else env
    for name in JOB_ID_VARS:
        if env.get(name):
            return env[name]
    return f"local-{os.getppid()}"


def candidate_ports(key: str, job: str, tries: int = PORT_TRIES) -> list[int]:
    """Ports to try, in order: a hash of (task key, job id) spread over PORT_LOW .. PORT_LOW + PORT_SPAN."""
    base = int(hashlib.sha256(f"{key}:{job}".encode()).hexdigest()[:8], 16)
    return [PORT_LOW + (base + i * 7919) % PORT_SPAN for i in range(tries)]


def _route_to(peer: str) -> str | None:
    """This host's address on the interface that routes to `peer` (a connected UDP socket sends nothing)."""
    try:
        infos = socket.getaddrinfo(peer, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    for info in infos:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((info[4][0], 9))
            except OSError:
                continue
            address = probe.getsockname()[0]
            if not address.startswith("127."):
                return address
    return None


def _fqdn_address() -> str:
    name = socket.getfqdn()
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise PerfscaleError(
            f"cannot resolve this node's name {name!r} to an address for the other ranks ({exc}); "
            "fix the node's name resolution (/etc/hosts or DNS)"
        ) from exc
    addresses = [i[4][0] for i in infos]
    return next((a for a in addresses if not a.startswith("127.")), addresses[0])


def reachable_address(own_host: str, hosts: list[str]) -> str:
    """Rank 0's address as the other ranks should dial it (`hosts`: every rank's processor name)."""
    peers = [h for h in hosts if h != own_host]
    if not peers:
        return "127.0.0.1"
    return _route_to(peers[0]) or _fqdn_address()


@dataclass(frozen=True)
class Session:
    rank: int
    world: int
    local_rank: int
    local_world: int
    backend: str
    device: Any  # torch.device
    master_addr: str
    master_port: int
    job: str

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def _master_store(addr: str, ports: list[int], world: int, timeout: timedelta) -> tuple[Any, int]:
    import torch.distributed as dist

    last: Exception | None = None
    for port in ports:
        try:
            return dist.TCPStore(addr, port, world, True, timeout, wait_for_workers=False), port
        except (RuntimeError, OSError) as exc:  # DistNetworkError (a RuntimeError): EADDRINUSE and kin
            if "in use" not in str(exc).lower() and "eaddrinuse" not in str(exc).lower():
                raise
            log.info("port %d taken on rank 0, trying the next", port)
            last = exc
    raise PerfscaleError(f"no free port among {ports} on rank 0 ({last}); free one or rerun")


def _torchrun_env(
    rank: int, world: int, local: int, local_world: int, addr: str, port: int
) -> dict[str, str]:
    """The variables torchrun sets, which libraries started inside the session read (DeepSpeed's
    init_distributed, Hugging Face's Trainer): set while the session is open, put back after."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(local),
        "LOCAL_WORLD_SIZE": str(local_world),
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
    }


@contextmanager
def session(
    key: str,
    ranks: int | None = None,
    *,
    gpus: bool = False,
    init_timeout_s: float = INIT_TIMEOUT_S,
    timeout_s: float = COLLECTIVE_TIMEOUT_S,
) -> Iterator[Session]:
    """torch.distributed's default process group over this MPI job, destroyed when the block ends.

    `key` (the task key) and the job id pick the port; `ranks`, when given, must equal MPI's world size.
    """
    import torch
    import torch.distributed as dist

    mpi = _mpi()
    comm = mpi.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if ranks is not None and world != ranks:
        raise TaskFailure(
            FailureKind.BAD_INPUT,
            f"the task asks for {ranks} ranks but MPI started {world}: the launcher started the ranks as "
            "separate singletons or with another count; start `perfscale task run` through the site's "
            "launcher line (perfscale/sched/mpi.py) with -n matching resources.ranks",
        )
    local = comm.Split_type(mpi.COMM_TYPE_SHARED, key=rank)
    try:
        hosts = comm.allgather(mpi.Get_processor_name())
        job = comm.bcast(job_id() if rank == 0 else None, root=0)
        addr = comm.bcast(reachable_address(hosts[0], hosts) if rank == 0 else None, root=0)
        init_timeout = timedelta(seconds=init_timeout_s)
        store: Any = None
        port = -1
        failure = ""
        if rank == 0:
            try:
                store, port = _master_store(addr, candidate_ports(key, job), world, init_timeout)
            except Exception as exc:  # every rank must learn of it, or they would wait for the store
                failure = str(exc)
        port, failure = comm.bcast((port, failure), root=0)
        if failure:
            raise PerfscaleError(failure)
        if rank != 0:
            store = dist.TCPStore(addr, port, world, False, init_timeout)
        use_gpu = gpus and torch.cuda.is_available()
        backend = "nccl" if use_gpu else "gloo"
        device = torch.device("cpu")
        if use_gpu:
            device = torch.device("cuda", local.Get_rank() % torch.cuda.device_count())
            torch.cuda.set_device(device)
        log.info("rank %d/%d: %s rendezvous at %s:%d (job %s)", rank, world, backend, addr, port, job)
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
        local_rank, local_size = local.Get_rank(), local.Get_size()
        env = _torchrun_env(rank, world, local_rank, local_size, addr, port)
        try:
            with environ(env):
                yield Session(rank, world, local_rank, local_size, backend, device, addr, port, job)
        finally:
            dist.destroy_process_group()
            del store
    finally:
        local.Free()
