"""Imports the modules of the built-in stage kinds so that they register themselves."""

from perfscale.stages import (  # noqa: F401
    corrupt,
    evaluate,
    function,
    generate,
    ingest,
    predict,
    profile,
    rank_study,
    split,
)
