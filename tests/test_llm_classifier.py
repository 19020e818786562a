"""The llm_classifier model (perfscale.models.llm_head, perfscale.llm.classifier): a tiny GPT-2 with a
sequence-classification head, fine-tuned on a real table (scikit-learn's wine) written as text, beside the
classical models of perfscale.models; saved and loaded without pickles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from perfscale.errors import BadInput
from perfscale.models import build_model
from perfscale.models.base import load_model


@pytest.fixture(scope="module")
def wine() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    data = load_wine(as_frame=True)
    features = ["alcohol", "flavanoids", "color_intensity", "proline"]
    table = data.frame[features].copy()
    table["cultivar"] = [f"c{t}" for t in data.target]
    order = np.random.default_rng(0).permutation(len(table))
    return table.iloc[order[:120]], table.iloc[order[120:]], features


def test_the_llm_head_beats_the_majority_class_and_reloads(wine, tmp_path):
    train, test, features = wine
    model = build_model("llm_classifier", {"epochs": 10, "batch_size": 16, "lr": 0.002}, seed=1)
    model.fit(train, ["cultivar"], features)
    accuracy = float((model.predict(test)["cultivar"] == test["cultivar"]).mean())
    majority = float(test["cultivar"].value_counts(normalize=True).max())
    assert accuracy > majority, (accuracy, majority)
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), 3) and np.allclose(proba.sum(axis=1), 1)
    again = load_model(model.save(tmp_path / "m"))
    assert (
        sorted(p.name for p in (tmp_path / "m" / "lm").iterdir() if p.suffix in (".bin", ".pt", ".pkl")) == []
    )
    assert np.allclose(again.predict_proba(test), proba, atol=1e-6)


def test_regression_and_long_rows_are_refused(wine):
    train, _, features = wine
    with pytest.raises(BadInput, match="llm_classifier: does not do regression"):
        build_model("llm_classifier", {"epochs": 1}).fit(train, ["alcohol"], features[1:])
    with pytest.raises(BadInput, match="more than max_length 8: raise max_length"):
        build_model("llm_classifier", {"epochs": 1, "max_length": 8}).fit(train, ["cultivar"], features)
