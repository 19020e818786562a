"""Build hook: the wheel carries the top-level site_configs/ and launchers/ as perfscale/_data/.

The folders stay where they are in the checkout (their one source); `perfscale.resources` finds them in the
wheel, or in the checkout for an editable install, where nothing is copied. Everything else is in
pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_FOLDERS = ("site_configs", "launchers")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's folders
            return
        here = Path(__file__).resolve().parent
        for name in DATA_FOLDERS:
            target = Path(self.build_lib) / "perfscale" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(here / name, target)


setup(cmdclass={"build_py": BuildPyWithData})
