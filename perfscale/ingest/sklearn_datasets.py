"""scikit-learn's bundled data sets (no download): `perfscale ingest sklearn iris` or an `ingest` stage with
``{kind: sklearn, source: digits}``. SOURCE `DEFAULT` is digits.

Sources: digits, iris, wine, breast_cancer (classification) and diabetes (regression). A SOURCE may also be
the data file itself inside scikit-learn's package (``sklearn/datasets/data/iris.csv``...): its name picks the
data set, whose rows are read by scikit-learn's own loader (``load_<name>``), so the table is exactly what
``load_<name>(as_frame=True)`` gives, with these changes:

* the class column is always named ``target``; for classification sets it holds strings (the class names,
  e.g. ``setosa``; digits: ``"0"`` ... ``"9"``), so every perfscale metric and generator treats it as
  categorical; diabetes keeps its float target;
* digits' pixel columns (counts 0-16) are int64; diabetes is the unscaled table (``scaled=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from perfscale.errors import BadInput
from perfscale.ingest.registry import ingester

TARGET = "target"
DEFAULT_DATASET = "digits"
# data set -> the file scikit-learn ships it in (diabetes' target is a second file, read by its loader)
DATA_FILES = {
    "digits": "digits.csv.gz",
    "iris": "iris.csv",
    "wine": "wine_data.csv",
    "breast_cancer": "breast_cancer.csv",
    "diabetes": "diabetes_data_raw.csv.gz",
}
CLASSIFICATION = ("digits", "iris", "wine", "breast_cancer")


def data_file(name: str) -> Path:
    """The path of data set `name`'s file inside the installed scikit-learn."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / DATA_FILES[name]


def load_dataset(name: str) -> pd.DataFrame:
    """Data set `name` as one table (features, then `target`); BadInput naming the known sets otherwise."""
    if name not in DATA_FILES:
        raise BadInput(f"unknown scikit-learn data set {name!r}; known: {', '.join(sorted(DATA_FILES))}")
    import sklearn.datasets

    loader = getattr(sklearn.datasets, f"load_{name}")
    bunch = loader(as_frame=True, **({"scaled": False} if name == "diabetes" else {}))
    features = bunch.data.copy()
    features.columns = [str(c) for c in features.columns]
    if TARGET in features.columns:  # no bundled set has one; a guard so the class column stays unique
        raise BadInput(f"scikit-learn data set {name!r} has a feature named {TARGET!r}")
    if name == "digits":
        features = features.astype("int64")
    target = bunch.target
    if name in CLASSIFICATION:
        names = [str(n) for n in bunch.target_names]
        target = pd.Series([names[int(i)] for i in target], dtype=object)
    return features.assign(**{TARGET: target.to_numpy()})


def _dataset_of(file: Path) -> str:
    by_file = {f: name for name, f in DATA_FILES.items()}
    if file.name not in by_file:
        raise BadInput(
            f"{file}: not one of scikit-learn's bundled data files ({', '.join(sorted(by_file))}); "
            f"give a data set name as SOURCE instead: {', '.join(sorted(DATA_FILES))}"
        )
    return by_file[file.name]


def _named(name: str) -> Callable[[], Path]:
    return lambda: data_file(name)


@ingester(
    "sklearn",
    patterns=tuple(DATA_FILES.values()),
    description="scikit-learn's bundled data sets: digits (DEFAULT), iris, wine, breast_cancer, diabetes",
    default_source=_named(DEFAULT_DATASET),
    named_sources={name: _named(name) for name in DATA_FILES},
)
def ingest_sklearn(files: list[Path]) -> pd.DataFrame:
    names = sorted({_dataset_of(f) for f in files})
    if len(names) != 1:
        raise BadInput(
            f"the sklearn importer reads one data set at a time; SOURCE holds {names}: name one of them"
        )
    return load_dataset(names[0])
