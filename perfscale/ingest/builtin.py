"""Imports the built-in importers so that they register themselves."""

import perfscale.ingest.caliper  # noqa: F401
from perfscale.ingest import jobtrace, rajaperf, sacct, sklearn_datasets, tabular  # noqa: F401
