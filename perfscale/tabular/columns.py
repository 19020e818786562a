"""Column names of the shard contract (docs/architecture.md), shared by the store that writes them, the
stages and metrics that read around them, and the report.

`PROVENANCE_COLUMNS`: added by the store to every shard row (underscored: a stage's data never clashes with
them). `SPLIT_COLUMN`: the `split` stage's train | holdout label; `split_part` takes one part without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PROVENANCE_COLUMNS = (
    "_task_key",
    "_site",
    "_host",
    "_started_at",
    "_duration_s",
    "_attempt",
    "_perfscale_version",
)
TASK_KEY_COLUMN = "_task_key"

SPLIT_COLUMN = "split"


def split_part(table: pd.DataFrame, part: str) -> pd.DataFrame:
    """The rows of a split table labelled `part` ("train" or "holdout"), without the label column."""
    return table[table[SPLIT_COLUMN] == part].drop(columns=SPLIT_COLUMN).reset_index(drop=True)
