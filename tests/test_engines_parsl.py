"""The Parsl engine's calls: they go to the HighThroughputExecutor as pickled bytes (perfscale.engines.
parsl_engine.pack), past the DataFlowKernel, and come back as the call's result or its exception."""

from __future__ import annotations

import functools
import operator
import os

import pytest

from perfscale.engines import make_engine
from perfscale.engines.parsl_engine import pack
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from tests.studies import FAILING


def test_a_packed_call_is_plain_pickle_unless_pickle_refuses_it():
    import pickle

    assert pickle.loads(pack((divmod, (7, 2)))) == (divmod, (7, 2))
    offset = 10
    fn, args = pickle.loads(pack((lambda x: x + offset, (5,))))  # dill's bytes, read by pickle
    assert fn(*args) == 15


def test_parsl_calls_return_results_raise_exceptions_and_carry_bound_arguments(tmp_path):
    # (a lambda of this module would reach the worker by reference, and a worker cannot import tests/;
    # the dill fallback for closures is checked in-process above)
    add = functools.partial(operator.add, 10)
    with make_engine("parsl", load_site("local"), tmp_path, workers=1) as engine:
        assert engine.submit(divmod, 7, 2).result(timeout=120) == (3, 1)
        assert engine.submit(add, 5).result(timeout=60) == 15
        with pytest.raises(ZeroDivisionError):
            engine.submit(divmod, 1, 0).result(timeout=60)
        worker = engine.submit(os.getpid).result(timeout=60)
    assert worker != os.getpid()
    assert list((tmp_path / "parsl" / "alive").iterdir()), "the worker beat for the watchdog"


@pytest.mark.slow  # Parsl takes ~30 s to report a lost worker: one loss only (no node_lost retry)
def test_a_dying_parsl_worker_is_node_lost_and_the_run_goes_on(write_study, tmp_path):
    study = FAILING.replace("MODE", "exit").replace(
        "retry: {app_error: 2}", "retry: {app_error: 2, node_lost: 0}"
    )
    store = prepare_run(write_study(study), load_site("local"), tmp_path / "run")
    summary = run_plan(store, "parsl", workers=2, progress=False)
    assert summary["fail"].failure_kinds == {"node_lost": 1}
    assert summary["fail"].done == 2 and summary["flaky"].done == 2
