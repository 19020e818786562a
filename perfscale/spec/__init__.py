"""Pydantic models for studies and sites, and their safe YAML loading."""

from perfscale.spec.site import Site, load_site
from perfscale.spec.study import Resources, RetryPolicy, Stage, Study, load_study

__all__ = ["Resources", "RetryPolicy", "Site", "Stage", "Study", "load_site", "load_study"]
