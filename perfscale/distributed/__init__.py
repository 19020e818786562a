"""Multi-rank tasks: the bootstrap of torch.distributed from MPI (see docs/distributed.md).

`session(key, ranks)` is the one entry point a training loop needs; it keeps no state of its own between
calls (torch keeps its default process group while the session is open, and the session destroys it).
"""

from perfscale.distributed.bootstrap import Session, mpi_world, session

__all__ = ["Session", "mpi_world", "session"]
