"""Caliper importer on the real RAJAPerf (Quartz, Lassen) and MPI-scaling profiles in ../shared/data/caliper,
checked value by value against what caliper-reader itself reports for the same files."""

from __future__ import annotations

import os
import random
import shutil
from datetime import datetime, timezone
from pathlib import Path

import caliperreader
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from perfscale.cli import main
from perfscale.errors import BadInput
from perfscale.ingest import read_source
from perfscale.ingest.caliper import (
    Profile,
    concat_profiles,
    metric_name,
    read_caliper_file,
    snake,
)

# ../shared/data beside the project (as CI lays it out), or $PERFSCALE_SHARED_DATA
DATA = Path(os.environ.get("PERFSCALE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATA = DATA / "caliper"
FILES = sorted(DATA.rglob("*.cali"))
if not FILES:
    raise RuntimeError(
        f"no .cali files under {DATA}: the tests need ../shared/data beside the project "
        "(or PERFSCALE_SHARED_DATA pointing at a copy)"
    )
QUARTZ = [f for f in FILES if "quartz" in f.parts]
LASSEN = [f for f in FILES if "lassen" in f.parts]
MPI = [f for f in FILES if "mpi_scaling" in f.parts]


def reference(file: Path) -> caliperreader.CaliperReader:
    reader = caliperreader.CaliperReader()
    reader.read(str(file))
    return reader


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return read_source("caliper", DATA)


def rows_of(table: pa.Table, file: Path) -> list[dict]:
    mask = pc.equal(table["_source_file"], str(file))
    return table.filter(mask).to_pylist()


def columns_by_attribute(table: pa.Table, kinds: tuple[str, ...]) -> dict[str, str]:
    """Caliper attribute -> column name, from the fields' metadata."""
    out = {}
    for f in table.schema:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        if meta.get("kind") in kinds:
            out[meta["caliper_attribute"]] = f.name
    return out


def test_the_data_is_there():
    assert len(FILES) == 23 and len(QUARTZ) == 5 and len(LASSEN) == 13 and len(MPI) == 5


def test_every_file_becomes_one_row_per_record(table):
    assert sorted(set(table["_source_file"].to_pylist())) == sorted(map(str, FILES))
    for file in FILES:
        assert len(rows_of(table, file)) == len(reference(file).records), file
    profiles = table.group_by("_source_file").aggregate([("profile", "count_distinct")])
    assert profiles["profile_count_distinct"].to_pylist() == [1] * len(FILES)
    assert len(set(table["profile"].to_pylist())) == len(FILES)


@pytest.mark.parametrize("file", FILES, ids=lambda f: str(f.relative_to(DATA)))
def test_records_match_caliper_reader(table, file):
    """Every record, in order: tree position, every metric and every other attribute, exactly."""
    reader = reference(file)
    rows = rows_of(table, file)
    metrics = columns_by_attribute(table, ("metric", "attribute"))
    nested = {a for a in reader.attributes() if reader.attribute(a).is_nested()}
    for rec, row in zip(reader.records, rows, strict=True):
        path = rec.get("path")
        assert row["region"] == (path[-1] if path else None)
        assert row["region_path"] == ("/".join(path) if path else None)
        assert row["depth"] == (len(path) - 1 if path else None)
        if path:
            value = rec[row["region_attribute"]]
            assert (
                row["region_attribute"] in nested
                and (value if isinstance(value, str) else value[-1]) == path[-1]
            )
        for key, raw in rec.items():
            if key == "path" or key in nested:
                continue
            kind = reader.attribute(key).attribute_type()
            expected = float(raw) if kind == "double" else int(raw) if kind in ("int", "uint") else raw
            assert row[metrics[key]] == expected, (key, raw)
            assert type(row[metrics[key]]) is type(expected)
        absent = [metrics[k] for k in metrics if k not in rec]
        assert all(row[c] is None for c in absent)


def expected_global(reader: caliperreader.CaliperReader, key: str) -> object:
    raw, attr = reader.globals[key], reader.attribute(key)
    adiak_type, kind = attr.get("adiak.type"), attr.attribute_type()
    if adiak_type == "date":
        return datetime.fromtimestamp(int(raw), tz=timezone.utc)
    if adiak_type and adiak_type.startswith("set of"):
        return [s.strip() for s in raw.strip("[]").split(",")]
    return float(raw) if kind == "double" else int(raw) if kind in ("int", "uint") else raw


@pytest.mark.parametrize("file", [QUARTZ[0], LASSEN[0], LASSEN[-1], MPI[0]], ids=lambda f: f.name)
def test_globals_match_caliper_reader(table, file):
    reader = reference(file)
    columns = columns_by_attribute(table, ("adiak", "global"))
    rows = rows_of(table, file)
    assert set(columns) >= set(reader.globals)
    for key in reader.globals:
        expected = expected_global(reader, key)
        assert all(
            row[columns[key]] == expected and type(row[columns[key]]) is type(expected) for row in rows
        ), key
    for key in set(columns) - set(reader.globals):  # another file's key: null here
        assert all(row[columns[key]] is None for row in rows)


def test_adiak_columns_are_named_and_typed(table):
    schema = table.schema
    assert schema.field("adiak_cluster").type == pa.string()
    assert schema.field("adiak_problem_size_run_param").type == pa.float64()
    assert schema.field("adiak_launchdate").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("adiak_libraries").type == pa.list_(pa.string())
    assert schema.field("adiak_jobsize").type == pa.int64()
    assert schema.field("cali_caliper_version").type == pa.string()
    row = rows_of(table, QUARTZ[-1])[0]  # gcc10.3.1_2097152
    assert row["adiak_problem_size_run_param"] == 2097152.0
    assert (row["adiak_compiler"], row["adiak_variant"], row["adiak_tuning"]) == (
        "g++-10.3.1",
        "Base_Seq",
        "default",
    )


def test_quartz_and_lassen_are_told_apart_by_their_metadata(table):
    def values(files: list[Path], column: str) -> set:
        return {row[column] for f in files for row in rows_of(table, f)}

    assert values(QUARTZ, "adiak_cluster") == {"quartz"}
    assert values(LASSEN, "adiak_cluster") == {"lassen"}
    assert values(QUARTZ, "adiak_variant") == {"Base_Seq"}
    assert values(LASSEN, "adiak_variant") == {"Base_CUDA"}
    assert values(LASSEN, "adiak_tuning") == {"block_128", "block_256"}
    assert values(QUARTZ, "adiak_systype_build") == {"toss_4_x86_64_ib"}
    assert values(LASSEN, "adiak_systype_build") == {"blueos_3_ppc64le_ib_p9"}
    assert values(QUARTZ, "adiak_cuda_compiler_version") == {None}  # a Lassen-only key: null on Quartz
    assert values(LASSEN, "adiak_cuda_compiler_version") == {"10.2.89"}
    assert values(QUARTZ, "adiak_problem_size_run_param") == {1048576.0, 2097152.0}
    for f in MPI:
        assert (
            values([f], "adiak_jobsize") == values([f], "cali_mpi_world_size") == {int(f.stem.split("_")[0])}
        )


def test_metric_columns_and_mismatched_metric_sets(table):
    schema = table.schema
    for name in ("time_inclusive_min_s", "time_inclusive_max_s", "time_inclusive_avg_s", "time_inclusive_s"):
        assert schema.field(name).type == pa.float64()
        assert schema.field(name).metadata[b"unit"] == b"sec"
    assert schema.field("aggregate_slot_min").type == pa.int64()
    assert table.column_names[:6] == [
        "_source_file",
        "profile",
        "region",
        "region_path",
        "region_attribute",
        "depth",
    ]
    lassen = rows_of(table, LASSEN[0])
    mpi = rows_of(table, MPI[0])
    assert all(r["aggregate_slot_min"] is None for r in lassen)  # only Quartz profiles record node order
    assert all(r["bytes_per_rep"] is None for r in mpi)  # RAJAPerf metrics are absent from LULESH
    assert {r["region_attribute"] for r in mpi} == {None, "function", "loop", "mpi.function"}
    assert {r["region_attribute"] for r in lassen} == {None, "annotation"}
    main_row = next(r for r in mpi if r["region_path"] == "main/lulesh.cycle")
    assert (main_row["region"], main_row["depth"]) == ("lulesh.cycle", 1)


def test_profile_id_is_the_files_content(tmp_path):
    copy = tmp_path / "renamed.cali"
    shutil.copy(LASSEN[0], copy)
    first, moved = read_caliper_file(LASSEN[0]), read_caliper_file(copy)
    assert set(first["profile"].to_pylist()) == set(moved["profile"].to_pylist())
    assert moved["_source_file"][0].as_py() == str(copy)
    assert first.drop_columns(["_source_file"]).equals(moved.drop_columns(["_source_file"]))


def test_cli_writes_the_same_table(table, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ingest", "caliper", str(DATA), "--out", str(out)]) == 0
    assert f"{table.num_rows} rows x {table.num_columns} columns" in capsys.readouterr().out
    written = pq.read_table(next(out.glob("*.parquet")))
    assert written.equals(table)
    assert (
        written.schema.field("time_inclusive_s").metadata[b"caliper_attribute"]
        == b"sum#inclusive#sum#time.duration"
    )


def test_process_pool_gives_the_same_table(table, monkeypatch):
    monkeypatch.setenv("PERFSCALE_INGEST_WORKERS", "2")
    assert read_source("caliper", DATA).equals(table)


@pytest.mark.parametrize(
    "content",
    [random.Random(0).randbytes(4000), b"hello, world\n", b"", b"__rec=ctx,ref=99,attr=5,data=1\n"],
    ids=["random-bytes", "text", "empty", "dangling-ref"],
)
def test_unreadable_file_is_bad_input_naming_it(tmp_path, content):
    folder = tmp_path / "profiles"
    shutil.copytree(DATA / "mpi_scaling", folder)
    bad = folder / "zz_broken.cali"
    bad.write_bytes(content)
    with pytest.raises(BadInput, match=r"zz_broken\.cali"):
        read_source("caliper", folder)
    assert main(["ingest", "caliper", str(folder), "--out", str(tmp_path / "out")]) == 2


def test_naming_rules():
    assert metric_name("sum#time.duration", "sec") == "time_s"
    assert metric_name("inclusive#sum#time.duration", "sec") == "time_inclusive_s"
    assert metric_name("avg#inclusive#sum#time.duration", "sec") == "time_inclusive_avg_s"
    assert metric_name("sum#inclusive#sum#time.duration", "sec") == "time_inclusive_s"
    assert metric_name("max#time.duration", "usec") == "time_max_us"
    assert metric_name("any#any#max#Bytes/Rep", None) == "bytes_per_rep"
    assert metric_name("min#min#aggregate.slot", None) == "aggregate_slot_min"
    assert metric_name("count", None) == "count"
    assert snake("ProblemSizeRunParam") == "problem_size_run_param"
    assert snake("Compiler_path_version") == "compiler_path_version"
    assert snake("spot.channel") == "spot_channel"


def test_clashing_types_across_files_become_strings():
    def profile(value: pa.Array) -> Profile:
        field = pa.field("adiak_x", value.type, metadata={"kind": "adiak", "caliper_attribute": "x"})
        rows = pa.table({"region": ["a", "b"]})
        return Profile(rows, pa.Table.from_arrays([value], schema=pa.schema([field])))

    merged = concat_profiles([profile(pa.array([7])), profile(pa.array(["seven"])), profile(pa.array([1.5]))])
    assert merged["adiak_x"].to_pylist() == ["7", "7", "seven", "seven", "1.5", "1.5"]
    numbers = concat_profiles([profile(pa.array([7])), profile(pa.array([1.5]))])
    assert numbers["adiak_x"].to_pylist() == [7.0, 7.0, 1.5, 1.5]
