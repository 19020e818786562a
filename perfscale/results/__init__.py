"""What stage outputs mean: the analyses that both a stage and the report run on stages' tables.

A stage writes its table; the report reads it back and draws from it. Where both need the same reading (the
metric study's sets, headline components and rank correlations; labels of synthetic sets), it lives here,
below the stages and the report, so the report never imports a stage. Column names of the shard contract
are in perfscale.tabular.columns.
"""
