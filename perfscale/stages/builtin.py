"""Imports the modules of the built-in stage kinds so that they register themselves."""

from perfscale.stages import (  # noqa: F401
    corrupt,
    evaluate,
    fit_predict,
    function,
    generate,
    ingest,
    predict,
    profile,
    rank_study,
    split,
)
