"""perfscale: reproducible, resumable performance-data campaigns (profile, synthesise, evaluate, report)."""

__version__ = "0.1.0"
