"""SMOTE-style interpolation generator ("smote"): synthetic rows on segments between real neighbours.

As in the BNL job-record study, SMOTE is used here as a generator of whole tables, not only as a minority
oversampler: it works without labels and on regression tables.

Fit (no training, no randomness): every training row is put into one numeric space, the encoding of
`perfscale.tabular.encode.encode` (numeric/datetime columns standardised with the train mean and std, a
missing value at the mean plus a 0/1 missing-indicator axis; categorical/boolean columns one-hot, scaled so
that one category mismatch costs as much as one std), and its `k_neighbors` nearest other rows in that space
are found (exact, scipy cKDTree; ties broken by row order). Standardisation (not ranks) keeps the distances of
the DCR metric, so "how close are synthetic rows to real ones" is measured in the space the neighbours come
from.

Sample: a base row is drawn uniformly (label mode with `balance: true`: a class uniformly, then a row of it),
one of its neighbours uniformly, u ~ U(0, 1) and w ~ U(0, 1); the row's "picked endpoint" is the neighbour
when w < u, else the base (the endpoint nearer to the new point is picked more often). Then
* numeric and datetime columns: base + u * (neighbour - base); when one endpoint is missing the row takes the
  picked endpoint's value, so it is missing with the probability of picking the missing endpoint;
* categorical/boolean columns, `categorical: neighbour` (default): the picked endpoint's values, all
  categorical columns of a row from the same endpoint, so only category combinations seen in training appear;
  `categorical: majority` (SMOTE-NC): the most frequent value among the base row's neighbours (a tie goes to
  the value of the nearest neighbour among the tied).
Integer columns and allowed sets are snapped, and bounds clipped, by the shared post-processing.

`label` (a column name): neighbours are searched among rows of the same class only (classic SMOTE), so a
synthetic row of class c lies between two class-c rows; without `balance` base rows are drawn uniformly, so
classes keep their training proportions; with `balance: true` classes are drawn equally often (minority
classes oversampled). A class with k or fewer rows uses all its other rows; a class with a single row
reproduces it. Missing label values form a class of their own.

Hyperparameters (`SmoteHyperparameters`): k_neighbors (default 5, capped at the rows - 1), label (default
none), balance (default false; needs label), categorical ("neighbour" | "majority").

Imputation (`_impute`): for each row, the k nearest training rows are found on the row's known columns only
(same encoding; with `label` known, among rows of that class), two distinct of them are picked at random and
the missing columns are filled by the rule above with those two as endpoints (majority: among the k). A row
with no known column gets an unconditional sample. Conditional sampling (`_sample_conditioned`): the base and
neighbour rows are restricted to training rows that meet every equality of the conditions (neighbours are
searched again among them), so categorical and numeric equalities hold exactly; without equalities, or when
no training row meets them, it returns None and `sample` falls back to rejection sampling. Other conditions
(ranges, sets) are left to `sample`, which keeps the rows that meet them. Both hooks serve the public
`sample(n, seed, conditions=...)` and `impute(table, seed)`. `draws(n, seed)` returns the base rows,
neighbours and weights behind `sample(n, seed)`, and `neighbours` the fitted neighbour lists (for checks).

Privacy: the model IS the training table. The saved folder (smote.npz: every training row's values;
smote.json: the categories) holds the training rows verbatim, and synthetic rows lie on segments between real
rows, near-copies when two neighbours are close (check the dcr metric). Treat a saved SMOTE model as being
as sensitive as its training data. No pickle is used (`pickled_files` is empty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt, model_validator

from perfscale.errors import BadInput
from perfscale.generators.base import Generator, model_file
from perfscale.generators.registry import register_generator
from perfscale.options import OptionsModel
from perfscale.tabular.values import is_missing

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from perfscale.generators.base import TrainingLog
    from perfscale.generators.conditions import Conditions
    from perfscale.tabular.meta import TableMeta

ARRAYS_FILE = "smote.npz"
COLUMNS_FILE = "smote.json"
_CONTINUOUS = ("numerical", "integer", "datetime")


@dataclass
class Draws:
    """The choices behind `n` synthetic rows: training row positions `base` and `neighbour` and the
    interpolation weights `u` (a numeric value is base + u * (neighbour - base))."""

    base: np.ndarray
    neighbour: np.ndarray
    u: np.ndarray
    pick: np.ndarray  # True where the row's picked endpoint (categories, missing values) is the neighbour


@dataclass
class _Rows:
    """Training rows as SMOTE keeps them: continuous columns as float64 (datetimes as ns, NaN = missing),
    categorical/boolean columns as integer codes into `categories` (-1 = missing)."""

    columns: list[str]
    kinds: dict[str, str]  # column -> meta type
    dtypes: dict[str, str]  # datetime column -> dtype text, to rebuild timestamps
    categories: dict[str, list[Any]]
    values: np.ndarray  # (rows, continuous columns)
    codes: np.ndarray  # (rows, categorical columns)

    @property
    def continuous(self) -> list[str]:
        return [c for c in self.columns if self.kinds[c] in _CONTINUOUS]

    @property
    def categorical(self) -> list[str]:
        return [c for c in self.columns if self.kinds[c] not in _CONTINUOUS]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "kinds": self.kinds,
            "dtypes": self.dtypes,
            "categories": self.categories,
        }


class SmoteHyperparameters(OptionsModel):
    """SMOTE's hyperparameters (see the module doc for what each does)."""

    k_neighbors: PositiveInt = Field(5, description="neighbours searched per row (capped at the rows - 1)")
    label: str | None = Field(
        None, min_length=1, description="class column: neighbours within a class (None: all rows)"
    )
    balance: bool = Field(False, description="draw classes equally often (needs label)")
    categorical: Literal["neighbour", "majority"] = Field(
        "neighbour", description="categories from the picked endpoint, or the neighbours' majority (SMOTE-NC)"
    )

    @model_validator(mode="after")
    def _balance_needs_label(self) -> SmoteHyperparameters:
        if self.balance and self.label is None:
            raise ValueError("balance: true needs label (the class column to balance); set label")
        return self


@register_generator
class SmoteGenerator(Generator):
    """SMOTE interpolation between nearest training rows; see the module docstring for every rule."""

    name = "smote"
    pickled_files = ()
    hyperparameters_model = SmoteHyperparameters
    params: SmoteHyperparameters

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self._rows: _Rows | None = None
        self._neighbours: np.ndarray | None = None  # (rows, k) training positions, nearest first, -1 = none
        self._groups: np.ndarray | None = None  # (rows,) class id of each row (all 0 without label)
        self._points: np.ndarray | None = None  # encoded training rows, rebuilt on demand

    @property
    def neighbours(self) -> np.ndarray:
        """Each training row's neighbours (positions, nearest first; -1 pads rows of small classes)."""
        self._require_fitted("read the neighbours of")
        return self._neighbours.copy()

    def fit(self, table: pd.DataFrame, meta: TableMeta, seed: int) -> TrainingLog:
        label = self.params.label
        columns = getattr(table, "columns", None)
        if label is not None and columns is not None and label not in columns:
            raise BadInput(
                f"smote hyperparameter label={label!r} is not a column of the training table; "
                f"use one of {list(columns)} or leave label unset"
            )
        return super().fit(table, meta, seed)

    # ---- hooks ----------------------------------------------------------------------------------------

    def _fit(self, table: pd.DataFrame, meta: TableMeta, seed: int) -> pd.DataFrame | None:
        rows = _encode_rows(table, meta)
        groups = _label_groups(table, self.params.label)
        points = _points(rows)
        self._rows, self._groups, self._points = rows, groups, points
        self._neighbours = _neighbour_graph(points, groups, self.params.k_neighbors)
        return None

    def draws(self, n: int, seed: int) -> Draws:
        """The base rows, neighbours and weights `sample(n, seed)` interpolates (for inspection and tests)."""
        import numpy as np

        from perfscale.generators.base import _check_n, _check_seed

        n, seed = _check_n(n), _check_seed(seed)
        self._require_fitted("draw from")
        pool = np.arange(len(self._rows))
        return _draw(
            np.random.default_rng(seed), n, pool, self._groups, self._neighbours, self.params.balance
        )

    def _sample(self, n: int, seed: int) -> pd.DataFrame:
        return self._interpolate(self.draws(n, seed), self._neighbours)

    def _sample_conditioned(self, n: int, seed: int, conditions: Conditions) -> pd.DataFrame | None:
        import numpy as np

        equal = {c: v for c, v in conditions.equalities().items() if c in self._rows.columns}
        if not equal:
            return None
        pool = np.flatnonzero(_matching(self._rows, equal))
        if pool.size == 0:
            return None
        local = _neighbour_graph(self._encoded()[pool], self._groups[pool], self.params.k_neighbors)
        graph = np.full_like(self._neighbours, -1)
        graph[pool, : local.shape[1]] = np.where(local >= 0, pool[np.maximum(local, 0)], -1)
        draws = _draw(np.random.default_rng(seed), n, pool, self._groups, graph, self.params.balance)
        return self._interpolate(draws, graph)

    def _impute(self, known: pd.DataFrame, seed: int) -> pd.DataFrame | None:
        import numpy as np

        rows, rng = self._rows, np.random.default_rng(seed)
        query = _encode_like(known[rows.columns].reset_index(drop=True), rows)
        m, k = len(known), self._neighbours.shape[1]
        missing = np.column_stack([_missing(query, c) for c in rows.columns]).reshape(m, len(rows.columns))
        a, b = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
        votes = np.full((m, k), -1, dtype=np.int64)
        patterns, which = np.unique(missing, axis=0, return_inverse=True)
        for p, pattern in enumerate(patterns):
            members = np.flatnonzero(which.ravel() == p)
            known_cols = [c for c, gone in zip(rows.columns, pattern, strict=True) if not gone]
            if not known_cols:  # nothing to condition on: an unconditional draw
                d = _draw(rng, members.size, np.arange(len(rows)), self._groups, self._neighbours, False)
                a[members], b[members], votes[members] = d.base, d.neighbour, self._neighbours[d.base]
                continue
            for subset, candidates in self._candidate_groups(query, members, known_cols):
                near = _query_neighbours(rows, query, subset, candidates, known_cols, k)
                votes[subset, : near.shape[1]] = near
                first, second = _two_of(rng, near.shape[1], subset.size)
                a[subset] = near[np.arange(subset.size), first]
                b[subset] = near[np.arange(subset.size), second]
        u = rng.random(m)
        draws = Draws(base=a, neighbour=b, u=u, pick=rng.random(m) < u)
        values, codes = _interpolate(rows, draws, votes, self.params.categorical)
        cont_missing = missing[:, [rows.columns.index(c) for c in rows.continuous]]
        out = _frame_of(rows, np.where(cont_missing, values, query.values), codes)
        for name in rows.categorical:  # set categorical cells keep their own value (even an unseen one)
            set_cells = ~missing[:, rows.columns.index(name)]
            out.loc[set_cells, name] = known[name].to_numpy(dtype=object)[set_cells]
        out.index = known.index
        return out

    def _save_model(self, folder: Path) -> None:
        import numpy as np

        rows = self._rows
        np.savez(
            folder / ARRAYS_FILE,
            values=rows.values,
            codes=rows.codes,
            neighbours=self._neighbours,
            groups=self._groups,
        )
        (folder / COLUMNS_FILE).write_text(json.dumps(rows.to_json(), indent=1) + "\n", encoding="utf-8")

    def _load_model(self, folder: Path) -> None:
        import zipfile

        import numpy as np

        arrays_path, columns_path = model_file(folder, ARRAYS_FILE), model_file(folder, COLUMNS_FILE)
        try:
            info = json.loads(columns_path.read_text(encoding="utf-8"))
            with np.load(arrays_path, allow_pickle=False) as arrays:
                data = {key: arrays[key] for key in ("values", "codes", "neighbours", "groups")}
            rows = _Rows(
                columns=list(info["columns"]),
                kinds=dict(info["kinds"]),
                dtypes=dict(info["dtypes"]),
                categories={k: list(v) for k, v in info["categories"].items()},
                values=data["values"].astype("float64"),
                codes=data["codes"].astype("int64"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
            raise BadInput(
                f"{folder} holds a corrupted SMOTE model ({exc!r}); save the generator again"
            ) from exc
        n = len(rows)
        shapes_ok = (
            data["codes"].shape == (n, len(rows.categorical))
            and data["values"].shape == (n, len(rows.continuous))
            and data["neighbours"].shape[0] == n
            and data["groups"].shape == (n,)
        )
        if not shapes_ok:
            raise BadInput(f"{arrays_path} does not match {columns_path}: save the generator again")
        self._rows, self._points = rows, None
        self._neighbours, self._groups = data["neighbours"].astype("int64"), data["groups"].astype("int64")

    def _model_state(self) -> dict[str, Any]:
        import numpy as np

        return {
            "k_neighbors": int(self._neighbours.shape[1]),
            "classes": int(np.unique(self._groups).size),
        }

    # ---- helpers ----------------------------------------------------------------------------------------

    def _encoded(self) -> np.ndarray:
        if self._points is None:
            self._points = _points(self._rows)
        return self._points

    def _interpolate(self, draws: Draws, graph: np.ndarray) -> pd.DataFrame:
        """Raw rows for `draws`; the majority rule votes over the base row's neighbours in `graph`."""
        values, codes = _interpolate(self._rows, draws, graph[draws.base], self.params.categorical)
        return _frame_of(self._rows, values, codes)

    def _candidate_groups(
        self, query: _Rows, members: np.ndarray, known_cols: list[str]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(query rows, candidate training rows): one group, or one per known class in label mode."""
        import numpy as np

        everyone = np.arange(len(self._rows))
        label = self.params.label
        if label is None or label not in known_cols:
            return [(members, everyone)]
        train_class = _column(self._rows, label)
        query_class = _column(query, label)
        out = []
        keys = [_class_key(v) for v in query_class[members]]
        train_keys = np.array([_class_key(v) for v in train_class], dtype=object)
        for key in dict.fromkeys(keys):
            subset = members[np.array([k == key for k in keys])]
            candidates = np.flatnonzero(train_keys == key)
            out.append((subset, candidates if candidates.size else everyone))
        return out


# ---- encoding ---------------------------------------------------------------------------------------------


def _encode_rows(table: pd.DataFrame, meta: TableMeta) -> _Rows:
    import numpy as np
    import pandas as pd

    from perfscale.tabular.encode import float_values
    from perfscale.tabular.values import json_value

    columns = list(table.columns)
    kinds = {c: meta.columns[c].type for c in columns}
    continuous = [c for c in columns if kinds[c] in _CONTINUOUS]
    categorical = [c for c in columns if kinds[c] not in _CONTINUOUS]
    values = np.column_stack(
        [float_values(table[c], kinds[c]) for c in continuous] or [np.empty((len(table), 0))]
    )
    codes, categories = [], {}
    for name in categorical:
        col_codes, uniques = pd.factorize(table[name].astype(object), use_na_sentinel=True)
        codes.append(col_codes.astype("int64"))
        categories[name] = [json_value(v) for v in uniques]
    return _Rows(
        columns=columns,
        kinds=kinds,
        dtypes={c: str(table[c].dtype) for c in continuous if kinds[c] == "datetime"},
        categories=categories,
        values=values.astype("float64"),
        codes=np.column_stack(codes).astype("int64") if codes else np.empty((len(table), 0), dtype="int64"),
    )


def _encode_like(table: pd.DataFrame, rows: _Rows) -> _Rows:
    """`table` in the codes of the training `rows`; an unseen category gets a code past the known ones."""
    import numpy as np

    from perfscale.tabular.encode import float_values

    values = [
        float_values(table[c], "datetime" if rows.kinds[c] == "datetime" else "numerical")
        for c in rows.continuous
    ]
    codes = []
    for name in rows.categorical:
        lookup = {str(v): i for i, v in enumerate(rows.categories[name])}
        unseen = len(lookup)
        codes.append([-1 if is_missing(v) else lookup.get(str(v), unseen) for v in table[name]])
    n = len(table)
    return _Rows(
        columns=rows.columns,
        kinds=rows.kinds,
        dtypes=rows.dtypes,
        categories=rows.categories,
        values=np.column_stack(values).astype("float64") if values else np.empty((n, 0)),
        codes=np.array(codes, dtype="int64").T.reshape(n, len(codes)),
    )


def _frame(rows: _Rows, columns: list[str]) -> tuple[pd.DataFrame, TableMeta]:
    """`columns` of `rows` as a plain frame (categories as codes, missing as NaN) and its meta for encode."""
    import numpy as np
    import pandas as pd

    from perfscale.tabular.meta import Column, TableMeta

    data, meta = {}, {}
    for name in columns:
        if rows.kinds[name] in _CONTINUOUS:
            data[name] = rows.values[:, rows.continuous.index(name)]
            meta[name] = Column(type="numerical")
        else:
            code = rows.codes[:, rows.categorical.index(name)]
            data[name] = pd.Series(np.where(code >= 0, code, np.nan)).astype(object)
            meta[name] = Column(type="categorical")
    return pd.DataFrame(data, columns=columns), TableMeta(columns=meta)


def _points(rows: _Rows, columns: list[str] | None = None, queries: _Rows | None = None) -> Any:
    """The dcr encoding of the training rows (and of `queries`, scaled by the training rows) on `columns`."""
    from perfscale.tabular.encode import encode

    columns = rows.columns if columns is None else columns
    train, meta = _frame(rows, columns)
    if queries is None:
        return encode([train], meta)[0]
    return encode([train, _frame(queries, columns)[0]], meta)


def _label_groups(table: pd.DataFrame, label: str | None) -> np.ndarray:
    """Class id of every row: the label's value (missing is a class); 0 for all rows without a label."""
    import numpy as np
    import pandas as pd

    if label is None or label not in table.columns:  # a constant label column is not a model column
        return np.zeros(len(table), dtype="int64")
    codes, _ = pd.factorize(table[label].astype(object), use_na_sentinel=False)
    return codes.astype("int64")


def _column(rows: _Rows, name: str) -> np.ndarray:
    if rows.kinds[name] in _CONTINUOUS:
        return rows.values[:, rows.continuous.index(name)]
    return rows.codes[:, rows.categorical.index(name)]


def _class_key(value: Any) -> Any:
    """Hashable key of a label value under which all missing values (NaN, code -1) are one class."""
    import math

    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _missing(rows: _Rows, name: str) -> np.ndarray:
    import numpy as np

    column = _column(rows, name)
    return np.isnan(column) if rows.kinds[name] in _CONTINUOUS else column < 0


def _matching(rows: _Rows, equal: dict[str, Any]) -> np.ndarray:
    """Training rows that meet every equality (categories compared as text, numbers as floats)."""
    import numpy as np
    import pandas as pd

    from perfscale.tabular.encode import float_values

    keep = np.ones(len(rows), dtype=bool)
    for name, value in equal.items():
        column = _column(rows, name)
        if rows.kinds[name] in _CONTINUOUS:
            kind = "datetime" if rows.kinds[name] == "datetime" else "numerical"
            target = float_values(pd.Series([value], dtype=object), kind)[0]
            keep &= np.isnan(column) if np.isnan(target) else column == target
        else:
            text = [str(v) for v in rows.categories[name]]
            code = -1 if is_missing(value) else (text.index(str(value)) if str(value) in text else -2)
            keep &= column == code
    return keep


# ---- neighbours and draws ---------------------------------------------------------------------------------


def _neighbour_graph(points: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """(rows, k_eff) positions of each row's nearest other rows within its group, nearest first, -1 padded.

    k_eff = min(k, rows - 1) (at least 1 column). A row is never its own neighbour, even among duplicates.
    """
    import numpy as np
    from scipy.spatial import cKDTree

    n = len(points)
    k_eff = max(1, min(k, n - 1))
    out = np.full((n, k_eff), -1, dtype=np.int64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        kk = min(k_eff, members.size - 1)
        if kk == 0:
            continue
        _, idx = cKDTree(points[members]).query(points[members], k=kk + 1)
        idx = idx.reshape(members.size, kk + 1)
        is_self = idx == np.arange(members.size)[:, None]
        no_self = ~is_self.any(axis=1)  # duplicates can push the row itself out of its k+1 nearest
        is_self[no_self, -1] = True
        out[members, :kk] = members[idx[~is_self].reshape(members.size, kk)]
    return out


def _draw(
    rng: np.random.Generator,
    n: int,
    pool: np.ndarray,
    groups: np.ndarray,
    graph: np.ndarray,
    balance: bool,
) -> Draws:
    """Base rows from `pool` (uniform, or uniform over its classes with `balance`), a uniform neighbour of
    each from `graph` (the base itself when it has none), u and the picked endpoint."""
    import numpy as np

    if balance:
        classes, sizes = np.unique(groups[pool], return_counts=True)
        ordered = pool[np.argsort(groups[pool], kind="stable")]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        c = rng.integers(0, classes.size, n)
        base = ordered[starts[c] + (rng.random(n) * sizes[c]).astype(np.int64)]
    else:
        base = pool[rng.integers(0, pool.size, n)]
    counts = (graph[base] >= 0).sum(axis=1)
    j = (rng.random(n) * np.maximum(counts, 1)).astype(np.int64)
    neighbour = np.where(counts > 0, graph[base, j], base)
    u = rng.random(n)
    pick = rng.random(n) < u
    return Draws(base=base, neighbour=neighbour, u=u, pick=pick)


def _query_neighbours(
    rows: _Rows, query: _Rows, subset: np.ndarray, candidates: np.ndarray, columns: list[str], k: int
) -> np.ndarray:
    """The min(k, candidates) nearest `candidates` of the `subset` query rows on `columns`, nearest first."""
    import numpy as np
    from scipy.spatial import cKDTree

    train, queries = _points(rows, columns, _take(query, subset))
    kk = max(1, min(k, candidates.size))
    _, idx = cKDTree(train[candidates]).query(queries, k=kk)
    return candidates[np.asarray(idx).reshape(subset.size, kk)]


def _take(rows: _Rows, positions: np.ndarray) -> _Rows:
    return _Rows(
        rows.columns, rows.kinds, rows.dtypes, rows.categories, rows.values[positions], rows.codes[positions]
    )


def _two_of(rng: np.random.Generator, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct positions in [0, k) per row (the same one twice when k == 1)."""
    first = rng.integers(0, k, n)
    if k == 1:
        return first, first
    return first, (first + 1 + rng.integers(0, k - 1, n)) % k


# ---- interpolation ----------------------------------------------------------------------------------------


def _interpolate(rows: _Rows, draws: Draws, votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Continuous values and category codes of the synthetic rows for `draws`; `votes` holds, per output
    row, the neighbour list of the majority rule."""
    import numpy as np

    x0, x1 = rows.values[draws.base], rows.values[draws.neighbour]
    u, pick = draws.u[:, None], draws.pick[:, None]
    values = np.where(np.isnan(x0) | np.isnan(x1), np.where(pick, x1, x0), x0 + u * (x1 - x0))
    picked = np.where(pick, rows.codes[draws.neighbour], rows.codes[draws.base])
    if mode == "majority" and picked.shape[1]:
        picked = np.column_stack(
            [_majority(rows.codes[:, j], votes, picked[:, j]) for j in range(picked.shape[1])]
        ).reshape(picked.shape)
    return values, picked


def _frame_of(rows: _Rows, values: np.ndarray, codes: np.ndarray) -> pd.DataFrame:
    """Raw rows (model columns): floats, timestamps for datetime columns, category values (None = missing)."""
    import numpy as np
    import pandas as pd

    out: dict[str, Any] = {}
    for j, name in enumerate(rows.continuous):
        out[name] = _as_datetime(values[:, j], rows.dtypes[name]) if name in rows.dtypes else values[:, j]
    for j, name in enumerate(rows.categorical):
        lookup = np.array([*rows.categories[name], None], dtype=object)  # code -1 indexes the trailing None
        out[name] = pd.Series(lookup[codes[:, j]], dtype=object)
    return pd.DataFrame(out, columns=rows.columns)


def _majority(codes: np.ndarray, votes: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The most frequent code among each row's voters (nearest first; a tie goes to the nearest of the
    tied); `fallback` for rows without voters."""
    import numpy as np

    valid = votes >= 0
    voted = np.where(valid, codes[np.maximum(votes, 0)], -2)
    same = (voted[:, :, None] == voted[:, None, :]) & valid[:, None, :]
    counts = np.where(valid, same.sum(axis=2), -1)
    best = voted[np.arange(len(votes)), counts.argmax(axis=1)]
    return np.where(valid.any(axis=1), best, fallback)


def _as_datetime(ns: np.ndarray, dtype_text: str) -> pd.Series:
    """Float nanoseconds (UTC for tz-aware columns) back to timestamps of the training dtype."""
    import numpy as np
    import pandas as pd

    dtype = pd.api.types.pandas_dtype(dtype_text)
    tz = getattr(dtype, "tz", None)
    stamps = pd.to_datetime(pd.Series(np.round(ns)), unit="ns", utc=tz is not None)
    return stamps.dt.tz_convert(tz) if tz is not None else stamps
