"""perfscale: reproducible, resumable performance-data campaigns (profile, synthesise, evaluate, report).

`perfscale.Campaign` drives a study from Python (see perfscale.campaign and docs/embedding.md); it loads on
first use, so `import perfscale` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfscale.version import __version__

if TYPE_CHECKING:
    from perfscale.campaign import Campaign

__all__ = ["Campaign", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Campaign":
        from perfscale.campaign import Campaign

        return Campaign
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
