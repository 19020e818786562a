"""CSV and Parquet importers, the `ingest` command and the `ingest` stage."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from perfscale.cli import main
from perfscale.errors import BadInput, SpecError
from perfscale.ingest import read_source
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site


@pytest.fixture
def csv_folder(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    pd.DataFrame({"app": ["lulesh", "amg"], "runtime_s": [1.5, 2]}).to_csv(folder / "a.csv", index=False)
    pd.DataFrame({"app": ["kripke"], "nodes": [4]}).to_csv(folder / "sub" / "b.csv", index=False)
    (folder / "notes.txt").write_text("not a csv")
    return folder


def test_folder_is_searched_recursively_and_schemas_unify(csv_folder):
    table = read_source("csv", csv_folder).to_pandas()
    assert table["app"].tolist() == ["lulesh", "amg", "kripke"]
    assert table["runtime_s"].isna().tolist() == [False, False, True]
    assert table["_source_file"].str.endswith(("a.csv", "b.csv")).all()


def test_bad_sources(tmp_path, csv_folder):
    with pytest.raises(BadInput, match="no such file or folder"):
        read_source("csv", tmp_path / "missing")
    with pytest.raises(BadInput, match=r"no files matching \*.parquet"):
        read_source("parquet", csv_folder)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(BadInput, match=r"bad\.parquet: not a readable Parquet file"):
        read_source("parquet", tmp_path / "bad.parquet")
    with pytest.raises(SpecError, match="unknown ingest kind 'excel'"):
        read_source("excel", csv_folder)


def test_cli_ingest_round_trip(csv_folder, tmp_path, capsys):
    assert main(["ingest", "csv", str(csv_folder), "--out", str(tmp_path / "out")]) == 0
    written = list((tmp_path / "out").glob("*.parquet"))
    assert len(written) == 1 and pq.read_table(written[0]).num_rows == 3
    assert main(["ingest", "parquet", str(tmp_path / "out"), "--out", str(tmp_path / "again")]) == 0
    again = pq.read_table(next((tmp_path / "again").glob("*.parquet")))
    assert again.num_rows == 3 and "app" in again.column_names


INGEST_AND_SPLIT = """
name: ing
stages:
  imported: {kind: ingest, params: {kind: csv, source: runs.csv, keep_provenance: KEEP}}
  split: {kind: split, inputs: [imported], params: {source: imported}}
"""


@pytest.mark.parametrize("keep", [False, True])
def test_ingest_stage_hides_provenance_from_stages_unless_kept(write_study, study_dir, tmp_path, keep):
    pd.DataFrame({"x": [1, 2, 3, 4], "y": ["a", "b", "a", "b"]}).to_csv(study_dir / "runs.csv", index=False)
    study = write_study(INGEST_AND_SPLIT.replace("KEEP", str(keep).lower()))
    store = prepare_run(study, load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=1, progress=False)
    assert summary["imported"].done == summary["split"].done == 1
    shard = store.read_stage("imported").to_pandas()  # with provenance: the shard keeps where rows came from
    assert shard["x"].tolist() == [1, 2, 3, 4]
    source = "source_file" if keep else "_source_file"
    assert (shard[source] == str(study_dir / "runs.csv")).all()
    split_columns = set(store.read_stage("split", provenance=False).column_names)
    # what a generator trains on and a metric scores: the file name only when asked for
    assert split_columns == ({"x", "y", "split", "source_file"} if keep else {"x", "y", "split"})


def test_keep_provenance_refuses_a_clash_with_the_datas_own_column(tmp_path):
    pd.DataFrame({"source_file": ["mine"], "x": [1]}).to_csv(tmp_path / "a.csv", index=False)
    assert read_source("csv", tmp_path / "a.csv").column_names == ["source_file", "x", "_source_file"]
    with pytest.raises(BadInput, match="gives both '_source_file' and 'source_file'"):
        read_source("csv", tmp_path / "a.csv", keep_provenance=True)


def test_split_names_hidden_provenance_columns(write_study, study_dir, tmp_path):
    pd.DataFrame({"x": [1, 2, 3, 4]}).to_csv(study_dir / "runs.csv", index=False)
    study = write_study(
        INGEST_AND_SPLIT.replace("KEEP", "false").replace(
            "{source: imported}", "{source: imported, columns: [x, _source_file]}"
        )
    )
    store = prepare_run(study, load_site("local"), tmp_path / "run")
    assert run_plan(store, "local", workers=1, progress=False)["split"].failed == 1
    message = store.attempts().query("stage == 'split'")["message"].iloc[-1]
    assert "['_source_file'], not in 'imported'" in message and "keep_provenance: true" in message


def test_cli_names_every_importer() -> None:
    from perfscale.cli import IMPORTER_NAMES
    from perfscale.ingest import list_ingesters

    assert sorted(IMPORTER_NAMES.split(", ")) == sorted(i.name for i in list_ingesters())
