from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

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
