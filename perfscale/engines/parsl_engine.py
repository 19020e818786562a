"""The Parsl engine: a HighThroughputExecutor whose provider comes from the site file.

The embedded default (site `local`) uses LocalProvider on this machine; cluster providers (Slurm, LSF) are
built from the same site fields in the clusters work.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from perfscale.engines.base import Engine
from perfscale.spec.site import Site


def parsl_config(site: Site, run_dir: Path, workers: int) -> Any:
    """A Parsl Config for `site`: one HTEX, `workers` workers per node, logs under `run_dir`."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    if site.scheduler != "none":
        raise NotImplementedError(
            f"site {site.name!r}: Parsl pilots on {site.scheduler} come with the clusters "
            "work; use array mode or a local site"
        )
    worker_init = "\n".join(site.setup)
    executor = HighThroughputExecutor(
        label="perfscale",
        address="127.0.0.1",
        max_workers_per_node=workers,
        cores_per_worker=1,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=worker_init),
    )
    return Config(
        executors=[executor], run_dir=str(run_dir), strategy="none", usage_tracking=0, initialize_logging=True
    )


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class ParslEngine(Engine):
    name = "parsl"

    def start(self) -> None:
        import parsl
        from parsl.app.app import python_app

        # HTEX starts `process_worker_pool.py` by name: the interpreter's bin folder must be on PATH
        bin_dir = str(Path(sys.executable).parent)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        self._dfk = parsl.load(parsl_config(self.site, self.run_root / "parsl", self.workers))
        self._app = python_app(_call, data_flow_kernel=self._dfk, executors=["perfscale"])

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._app(fn, *args)

    def shutdown(self) -> None:
        import parsl

        self._dfk.cleanup()
        parsl.clear()
