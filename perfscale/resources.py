"""Where the site files and job-script templates are, in a wheel and in a checkout.

The top-level folders `site_configs/` and `launchers/` are their one source. A wheel build copies them to
`perfscale/_data/` (setup.py); an editable install or a checkout on PYTHONPATH reads them where they are.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from perfscale.errors import PerfscaleError


def _data_dir(name: str) -> Path:
    packed = Path(str(files("perfscale") / "_data" / name))
    if packed.is_dir():
        return packed
    checkout = Path(__file__).resolve().parents[1] / name
    if checkout.is_dir():
        return checkout
    raise PerfscaleError(
        f"perfscale's {name}/ folder is missing: neither {packed} (wheel) nor {checkout} (checkout) exists; "
        "reinstall perfscale"
    )


def site_configs_dir() -> Path:
    """The folder of the site YAML files shipped with perfscale."""
    return _data_dir("site_configs")


def launchers_dir() -> Path:
    """The folder of the job-script templates (Jinja2) shipped with perfscale."""
    return _data_dir("launchers")
