"""RAJAPerf CSV importer on the real FCR 2026 output in ../shared/data/rajaperf-fcr2026 (H100, MI300A SPX and
CPX), checked against the CSVs read independently with the csv module, and on malformed copies."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from perfscale.cli import main
from perfscale.errors import BadInput
from perfscale.ingest import read_source
from perfscale.ingest.rajaperf import device_of, machine_of

DATA = Path(os.environ.get("PERFSCALE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATA = DATA / "rajaperf-fcr2026"
RUN_FILES = sorted(DATA.rglob("*-kernel-run-data.csv"))
if not RUN_FILES:
    raise RuntimeError(
        f"no RAJAPerf CSVs under {DATA}: the tests need ../shared/data beside the project "
        "(or PERFSCALE_SHARED_DATA pointing at a copy)"
    )


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return read_source("rajaperf", DATA).to_pandas()


def plain_rows(file: Path) -> list[dict[str, str]]:
    """The data lines of a RAJAPerf CSV as header -> text, read with the csv module."""
    with file.open() as f:
        lines = [row for row in csv.reader(f) if row]
    header = [h.strip() for h in lines[1]]
    return [dict(zip(header, (v.strip() for v in row), strict=True)) for row in lines[2:]]


def test_every_run_row_of_every_file_once(table: pd.DataFrame):
    expected = sum(len(plain_rows(f)) for f in RUN_FILES)
    assert len(table) == expected == 2603
    assert table.groupby("_source_file").size().to_dict() == {str(f): len(plain_rows(f)) for f in RUN_FILES}
    assert sorted(table["machine"].unique()) == ["H100", "MI300A-CPX", "MI300A-SPX"]
    assert sorted(table["tier"].unique()) == ["tier1", "tier2"]
    # 20 kernels, each on every machine's host CPU (Base_Seq) and GPU
    assert table.groupby(["machine", "device"])["kernel"].nunique().eq(20).all()
    assert set(table.loc[table.device == "cpu", "variant"]) == {"Base_Seq"}
    assert dict(table.groupby("machine")["mpi_ranks"].unique().map(list)) == {
        "H100": [4], "MI300A-CPX": [24], "MI300A-SPX": [4]
    }  # fmt: skip
    assert (table["checksum"] == "FAILED").sum() == 3  # MI300A-CPX LTIMES factor 1, kept and marked


@pytest.mark.parametrize("index", [0, 100, 333, 500, len(RUN_FILES) - 1])
def test_values_match_the_csv(table: pd.DataFrame, index: int):
    run_file = RUN_FILES[index]
    details = plain_rows(run_file.with_name(run_file.name.replace("run-data", "details")))[0]
    rows = table[table["_source_file"] == str(run_file)].reset_index(drop=True)
    for got, want in zip(rows.to_dict("records"), plain_rows(run_file), strict=True):
        assert got["kernel"] == want["Kernel"] == details["Kernel"]
        assert (got["variant"], got["tuning"], got["checksum"]) == (
            want["Variant"], want["Tuning"], want["Checksum"]
        )  # fmt: skip
        assert got["problem_size"] == float(want["Problem size"])
        assert got["time_per_rep_s"] == float(want["Mean time per rep (sec.)"])
        assert got["bandwidth_gib_per_s"] == float(want["Mean Bandwidth (GiB per sec.)"])
        assert got["gflop_per_s"] == float(want["Mean flops (gigaFLOP per sec.)"])
        assert got["bytes_read_per_rep"] == float(details["BytesRead/rep"])
        assert got["flops_per_rep"] == float(details["FLOPS/rep"])
        assert got["iterations_per_rep"] == float(details["Iterations/rep"])
        assert got["reps"] == float(details["Reps"])
        assert got["operational_complexity"] == details["OperationalComplexity"]
        assert got["factor"] == float(run_file.name.split("_factor_")[1].split("-")[0])


def test_one_hand_read_row(table: pd.DataFrame):
    # RPBenchmark_MI300A_tier1-SPX/ENERGY_factor_16-kernel-run-data.csv, line 4
    row = table[
        (table.machine == "MI300A-SPX") & (table.kernel == "Apps_ENERGY") & (table.factor == 16)
        & (table.variant == "Base_HIP")
    ].iloc[0]  # fmt: skip
    assert (row.tuning, row.problem_size, row.time_per_rep_s, row.bandwidth_gib_per_s) == (
        "block_256", 13334, 1.28560e-05, 208.645
    )  # fmt: skip
    assert (row.device, row.kernel_group, row.tier, row.mpi_ranks) == ("gpu", "Apps", "tier1", 4)


def test_folder_and_variant_rules():
    assert machine_of("RPBenchmark_MI300A_tier1-SPX") == ("MI300A-SPX", "tier1")
    assert machine_of("RPBenchmark_H100_tier2") == ("H100", "tier2")
    assert machine_of("my_cluster") == ("my_cluster", None)
    assert [device_of(v) for v in ("Base_Seq", "RAJA_OpenMP", "Base_CUDA", "RAJA_HIP")] == [
        "cpu", "cpu", "gpu", "gpu"
    ]  # fmt: skip


def test_cli_writes_parquet(tmp_path: Path):
    folder = DATA / "RPBenchmark_H100_tier1"
    assert main(["ingest", "rajaperf", str(folder), "--out", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("*.parquet")
    written = pq.read_table(out).to_pandas()
    assert len(written) == sum(len(plain_rows(f)) for f in folder.glob("*-kernel-run-data.csv"))
    assert set(written.machine) == {"H100"}


# --- malformed input ------------------------------------------------------------------------------------
GOOD = DATA / "RPBenchmark_H100_tier1" / "ENERGY_factor_16"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    folder = tmp_path / "RPBenchmark_X_tier1"
    folder.mkdir()
    for suffix in ("-kernel-run-data.csv", "-kernel-details.csv"):
        shutil.copy(f"{GOOD}{suffix}", folder / f"ENERGY_factor_16{suffix}")
    return folder


def test_copy_reads(copy: Path):
    t = read_source("rajaperf", copy).to_pandas()
    assert len(t) == 3 and set(t.machine) == {"X"}


def test_missing_details_file(copy: Path):
    (copy / "ENERGY_factor_16-kernel-details.csv").unlink()
    with pytest.raises(
        BadInput, match=r"ENERGY_factor_16-kernel-run-data.csv: no ENERGY_factor_16-kernel-det"
    ):
        read_source("rajaperf", copy)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_missing_column(copy: Path):
    _edit(copy / "ENERGY_factor_16-kernel-run-data.csv", "Mean time per rep (sec.)", "Time")
    with pytest.raises(BadInput, match=r"run-data.csv: header lacks \['Mean time per rep \(sec.\)'\]"):
        read_source("rajaperf", copy)


def test_value_not_a_number(copy: Path):
    _edit(copy / "ENERGY_factor_16-kernel-run-data.csv", "PASSED     ,", "PASSED     , fast ,")
    run = copy / "ENERGY_factor_16-kernel-run-data.csv"
    text = run.read_text().splitlines()
    header = text[1].split(",")
    fields = text[2].split(",")
    assert len(fields) == len(header) + 1
    with pytest.raises(BadInput, match="line 3 has 9 fields, the header 8"):
        read_source("rajaperf", copy)
    run.write_text("\n".join([*text[:2], ",".join([*fields[:5], "fast", *fields[7:]]), *text[3:]]))
    with pytest.raises(BadInput, match=r"column 'time_per_rep_s' .* on line 3 is not a number: 'fast'"):
        read_source("rajaperf", copy)


def test_kernel_missing_from_details(copy: Path):
    _edit(copy / "ENERGY_factor_16-kernel-details.csv", "Apps_ENERGY", "Apps_OTHER")
    with pytest.raises(BadInput, match=r"kernels \['Apps_ENERGY'\] are not in ENERGY_factor_16-kernel-det"):
        read_source("rajaperf", copy)


def test_empty_file(copy: Path):
    (copy / "ENERGY_factor_16-kernel-run-data.csv").write_text("Kernels run on 4 MPI ranks\n\n")
    with pytest.raises(BadInput, match=r"run-data\.csv: empty"):
        read_source("rajaperf", copy)


def test_no_ranks_line_is_accepted(copy: Path):
    run = copy / "ENERGY_factor_16-kernel-run-data.csv"
    run.write_text("\n".join(run.read_text().splitlines()[1:]))
    t = read_source("rajaperf", copy).to_pandas()
    assert len(t) == 3 and t["mpi_ranks"].isna().all()


def test_folder_without_rajaperf_files(tmp_path: Path):
    with pytest.raises(BadInput, match="no files matching"):
        read_source("rajaperf", tmp_path)
