"""A wheel install, as a cluster user makes it: built from a copy of this checkout, installed into a fresh
virtual environment, and run from a folder outside the checkout.

The venv gets perfscale only from the wheel. Its dependencies come from the test interpreter's own
site-packages through a .pth line (a plain path line: the editable install's finder that lives there is not
activated), so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.studies import NOOP

ROOT = Path(__file__).resolve().parents[1]
SITE_FILES = sorted(p.stem for p in (ROOT / "site_configs").glob("*.yaml"))
# what the wheel is built from: the package, its build files and the two data folders
SOURCES = ("perfscale", "site_configs", "launchers", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")

pytestmark = pytest.mark.slow  # ~20 s: a wheel build, a venv, and the CLI started a dozen times


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_data", "*.egg-info")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(the venv's bin folder, an environment without PYTHONPATH, a work folder outside the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    src, dist, venv, work = base / "src", base / "dist", base / "venv", base / "work"
    src.mkdir()
    work.mkdir()
    _copy_sources(src)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=base)
    (wheel,) = dist.glob("perfscale-*.whl")
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    _run([base_python, "-m", "venv", "--without-pip", venv], cwd=base)
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
    (Path(purelib.strip()) / "_perfscale_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([*pip, "--python", python, "install", "-q", "--no-deps", wheel], cwd=base)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", env, work


def test_the_wheel_carries_site_files_and_templates(wheel_venv) -> None:
    bin_dir, env, work = wheel_venv
    code = (
        "import perfscale, perfscale.resources as r; "
        "print(perfscale.__file__); print(r.site_configs_dir()); print(r.launchers_dir())"
    )
    package, sites, launchers = _run([bin_dir / "python", "-c", code], work, env).split()
    venv = bin_dir.parent
    for path in (package, sites, launchers):
        assert Path(path).is_relative_to(venv), f"{path} is not from the wheel install in {venv}"
        assert not Path(path).is_relative_to(ROOT)
    assert sorted(p.stem for p in Path(sites).glob("*.yaml")) == SITE_FILES
    assert sorted(p.name for p in Path(launchers).iterdir()) == sorted(
        p.name for p in (ROOT / "launchers").iterdir()
    )


def test_sites_list_from_the_wheel(wheel_venv) -> None:
    bin_dir, env, work = wheel_venv
    out = _run([bin_dir / "perfscale", "sites", "list"], work, {**env, "COLUMNS": "200"})
    listed = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert listed == SITE_FILES


def test_a_small_local_study_from_the_wheel(wheel_venv) -> None:
    bin_dir, env, work = wheel_venv
    (work / "tiny.yaml").write_text(NOOP)
    run = work / "runs" / "tiny"
    argv = [bin_dir / "perfscale", "run", "tiny.yaml", "--engine", "local", "--workers", "1"]
    _run([*argv, "--run-dir", run, "--quiet", "--no-report"], work, env)
    assert len(list((run / "stages" / "touch").glob("*.parquet"))) == 3
    assert yaml.safe_load((run / "site.json").read_text())["name"] == "local"


SCHEDULER_COMMANDS = [
    "sbatch",
    "squeue",
    "sacct",
    "scancel",
    "scontrol",
    "bsub",
    "bjobs",
    "bkill",
    "qsub",
    "qstat",
    "qdel",
    "flux",
]


def test_submit_dry_run_renders_every_site_without_a_scheduler_call(wheel_venv, tmp_path: Path) -> None:
    """`perfscale submit --dry-run` for every site file: the scripts are rendered from the wheel's templates
    and name the wheel's interpreter; no scheduler command runs (each is a stand-in that leaves a mark)."""
    bin_dir, env, work = wheel_venv
    fakes, marks = tmp_path / "fakes", tmp_path / "marks"
    fakes.mkdir()
    marks.mkdir()
    for name in SCHEDULER_COMMANDS:
        fake = fakes / name
        fake.write_text(f"#!/bin/sh\ntouch {marks / name}\nexit 1\n")
        fake.chmod(0o755)
    env = {**env, "PATH": f"{fakes}{os.pathsep}{env['PATH']}", "COLUMNS": "200"}
    (work / "tiny.yaml").write_text(NOOP)
    python = str(bin_dir / "python")
    for site in SITE_FILES:
        run = work / "dry" / site
        argv = [bin_dir / "perfscale", "submit", "tiny.yaml", "--site", site, "--dry-run", "--run-dir", run]
        if site == "local":  # no batch scheduler: array mode says so
            done = subprocess.run([str(a) for a in argv], cwd=work, env=env, capture_output=True, text=True)
            assert done.returncode == 2 and "array mode needs a batch scheduler" in done.stderr, done.stderr
            continue
        out = _run([*argv, "--set", "stages.touch.params.note=dry"], work, env)
        assert "nothing submitted" in out
        scripts = sorted((run / "arrays").glob("*.sh"))
        assert [s.name for s in scripts] == ["tiny-touch-0.sh"], site
        text = scripts[0].read_text()
        assert f"{python} -m perfscale.cli task run {run / 'plan.parquet'}" in text, site
        indices = (run / "arrays" / "tiny-touch-0.idx").read_text().split()  # one line per element
        assert sorted(map(int, indices)) == [0, 1, 2], site
        assert not (run / "arrays" / "jobs.json").exists()
        assert "note: dry" in (run / "study.yaml").read_text()
    assert sorted(p.name for p in marks.iterdir()) == []
