from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from perfscale.collect.builtin_kernels import build_kernels

TESTS = Path(__file__).parent
ROOT = TESTS.parent


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """A folder holding fns.py, where tests write study files that call its functions."""
    shutil.copy(TESTS / "fns.py", tmp_path / "fns.py")
    return tmp_path


@pytest.fixture
def write_study(study_dir: Path):
    def write(text: str, name: str = "study.yaml") -> Path:
        path = study_dir / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture(scope="session", autouse=True)
def cache_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private $PERFSCALE_CACHE for the whole test session: kernels and helpers are built from this
    checkout's sources, and nothing is read from or left in the user's ~/.cache."""
    base = tmp_path_factory.mktemp("perfscale-cache")
    old = os.environ.get("PERFSCALE_CACHE")
    os.environ["PERFSCALE_CACHE"] = str(base)
    yield base
    if old is None:
        del os.environ["PERFSCALE_CACHE"]
    else:
        os.environ["PERFSCALE_CACHE"] = old


@pytest.fixture(scope="session")
def kernel_dir(cache_base: Path) -> Path:
    return build_kernels()
