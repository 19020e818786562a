"""RAJAPerf's raw CSV output: `<KERNEL>_factor_<F>-kernel-run-data.csv` (mean time per rep, GiB/s, GFLOP/s and
checksum status of every variant x tuning) joined with `<...>-kernel-details.csv` (machine-independent work
per rep) beside it. One row per kernel x variant x tuning x problem size x machine (docs/ingest-rajaperf.md).

- The first line, `Kernels run on N MPI ranks`, gives `mpi_ranks` (null where a RAJAPerf version does not
  write it); the next line is the header. Fields are padded with spaces; they are stripped.
- The machine is not in the files: it comes from the folder holding them. `RPBenchmark_<machine>_<tier>`
  with an optional `-<mode>` (`RPBenchmark_MI300A_tier1-SPX`) gives `machine` `MI300A-SPX` and `tier`
  `tier1`; any other folder name is the machine as it is, with a null tier.
- `factor` comes from the file name (`_factor_<F>`), null if the name has none.
- `device` is `cpu` for `*_Seq` and `*_OpenMP` variants and `gpu` for CUDA, HIP and SYCL ones.
- A run-data file without its details file, a missing required column, a number that does not parse or a
  run-data kernel absent from the details is a `BadInput` naming the file and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.ingest.caliper import snake
from perfscale.ingest.registry import ingester

RUN_SUFFIX = "-kernel-run-data.csv"
DETAILS_SUFFIX = "-kernel-details.csv"
SOURCE_FILE = "_source_file"

#: RAJAPerf header -> column (numbers unless listed in TEXT); other headers are kept, snake_case
RUN_COLUMNS = {
    "Kernel": "kernel",
    "Variant": "variant",
    "Tuning": "tuning",
    "Problem size": "problem_size",
    "Checksum": "checksum",
    "Mean time per rep (sec.)": "time_per_rep_s",
    "Mean Bandwidth (GiB per sec.)": "bandwidth_gib_per_s",
    "Mean flops (gigaFLOP per sec.)": "gflop_per_s",
}
DETAILS_COLUMNS = {
    "Kernel": "kernel",
    "Problem size": "problem_size",
    "Reps": "reps",
    "Iterations/rep": "iterations_per_rep",
    "Kernels/rep": "kernels_per_rep",
    "BytesMoved/rep": "bytes_moved_per_rep",
    "FLOPS/rep": "flops_per_rep",
    "BytesTouched/rep": "bytes_touched_per_rep",
    "BytesRead/rep": "bytes_read_per_rep",
    "BytesWritten/rep": "bytes_written_per_rep",
    "BytesModifyWritten/rep": "bytes_modify_written_per_rep",
    "BytesAtomicModifyWritten/rep": "bytes_atomic_modify_written_per_rep",
    "BytesAllocated/rep": "bytes_allocated_per_rep",
    "ChecksumConsistency": "checksum_consistency",
    "OperationalComplexity": "operational_complexity",
    "MaxPerfectLoopDimensions": "max_perfect_loop_dimensions",
    "ProblemDimensionality": "problem_dimensionality",
}
TEXT = {"kernel", "variant", "tuning", "checksum", "checksum_consistency", "operational_complexity"}
RUN_REQUIRED = ("kernel", "variant", "tuning", "problem_size", "time_per_rep_s")
DETAILS_REQUIRED = ("kernel", "iterations_per_rep")
_RANKS = re.compile(r"^\s*Kernels run on (\d+) MPI ranks?\s*$")
_FOLDER = re.compile(r"^RPBenchmark_(?P<machine>[^_]+)_(?P<tier>[^-]+)(?:-(?P<mode>.+))?$")
_FACTOR = re.compile(r"_factor_(\d+)$")
_GPU = ("CUDA", "HIP", "SYCL", "Kokkos")


def machine_of(folder: str) -> tuple[str, str | None]:
    """`RPBenchmark_MI300A_tier1-SPX` -> (`MI300A-SPX`, `tier1`); another folder name -> (name, None)."""
    m = _FOLDER.match(folder)
    if not m:
        return folder, None
    machine = m["machine"] + (f"-{m['mode']}" if m["mode"] else "")
    return machine, m["tier"]


def device_of(variant: str) -> str:
    return "gpu" if any(variant.endswith(f"_{g}") for g in _GPU) else "cpu"


Row = dict[str, "str | float | None"]


def _number(text: str, file: Path, column: str, header: str, line: int) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise BadInput(
            f"{file}: column {column!r} ({header!r}) on line {line} is not a number: {text!r}; "
            "fix or remove that line"
        ) from None


def read_rajaperf_csv(
    file: Path, names: dict[str, str], required: tuple[str, ...]
) -> tuple[list[Row], int | None]:
    """One RAJAPerf CSV as typed rows (padding stripped, columns renamed) and its MPI rank count."""
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{file}: not a readable RAJAPerf CSV file: {exc}") from None
    numbered = [(n, ln) for n, ln in enumerate(lines, start=1) if ln.strip()]
    ranks = None
    if numbered and (m := _RANKS.match(numbered[0][1])):
        ranks = int(m[1])
        numbered = numbered[1:]
    if not numbered:
        raise BadInput(f"{file}: empty; a RAJAPerf CSV has a header line and one line per kernel run")
    header = [h.strip() for h in numbered[0][1].split(",")]
    columns = [names.get(h, snake(h)) for h in header]
    missing = [h for h, c in names.items() if c in required and c not in columns]
    if missing:
        kind = "run-data" if names is RUN_COLUMNS else "details"
        raise BadInput(f"{file}: header lacks {missing}; got {header}. Is this RAJAPerf's {kind} CSV?")
    rows: list[Row] = []
    for n, line in numbered[1:]:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(header):
            raise BadInput(f"{file}: line {n} has {len(fields)} fields, the header {len(header)}")
        rows.append(
            {
                c: (v if c in TEXT else _number(v, file, c, h, n))
                for c, h, v in zip(columns, header, fields, strict=True)
            }
        )
    return rows, ranks


def read_rajaperf_run(run_file: Path) -> list[Row]:
    """One run-data file joined with its details file: one row per variant x tuning (x kernel)."""
    stem = run_file.name[: -len(RUN_SUFFIX)]
    details_file = run_file.with_name(stem + DETAILS_SUFFIX)
    if not details_file.is_file():
        raise BadInput(
            f"{run_file}: no {details_file.name} beside it; RAJAPerf writes both, copy the details file too"
        )
    run, ranks = read_rajaperf_csv(run_file, RUN_COLUMNS, RUN_REQUIRED)
    details, _ = read_rajaperf_csv(details_file, DETAILS_COLUMNS, DETAILS_REQUIRED)
    by_kernel: dict[str, Row] = {}
    for d in details:
        if d["kernel"] in by_kernel:
            raise BadInput(f"{details_file}: kernel {d['kernel']!r} appears twice")
        by_kernel[str(d["kernel"])] = {k: v for k, v in d.items() if k not in ("kernel", "problem_size")}
    unknown = sorted({str(r["kernel"]) for r in run} - set(by_kernel))
    if unknown:
        raise BadInput(f"{run_file}: kernels {unknown} are not in {details_file.name}")
    machine, tier = machine_of(run_file.parent.name)
    factor = _FACTOR.search(stem)
    common = {
        "machine": machine,
        "tier": tier,
        "mpi_ranks": ranks,
        "factor": float(factor[1]) if factor else None,
        SOURCE_FILE: str(run_file),
    }
    return [
        {
            **r,
            **by_kernel[str(r["kernel"])],
            **common,
            "device": device_of(str(r["variant"])),
            "kernel_group": str(r["kernel"]).split("_", 1)[0],
        }
        for r in run
    ]


FRONT = ["machine", "tier", "device", "kernel", "kernel_group", "variant", "tuning", "factor", "problem_size",
         "mpi_ranks", "checksum", "time_per_rep_s"]  # fmt: skip


@ingester(
    "rajaperf",
    patterns=("*" + RUN_SUFFIX,),
    description="RAJAPerf kernel-run-data + kernel-details CSVs: a row per kernel x variant x tuning x size",
)
def ingest_rajaperf(files: list[Path]) -> pd.DataFrame:
    if len(files) == 1 and files[0].name.endswith(DETAILS_SUFFIX):
        files = [files[0].with_name(files[0].name[: -len(DETAILS_SUFFIX)] + RUN_SUFFIX)]
    bad = [f for f in files if not f.name.endswith(RUN_SUFFIX)]
    if bad:
        raise BadInput(f"{bad[0]}: not a RAJAPerf *{RUN_SUFFIX} file")
    table = pd.DataFrame([row for f in files for row in read_rajaperf_run(f)])
    text = TEXT | {"machine", "tier", "device", "kernel_group", SOURCE_FILE}
    for c in table.columns:
        if c not in text:
            table[c] = table[c].astype(np.float64)
    key = ["machine", "tier", "kernel", "variant", "tuning", "factor", "problem_size", "mpi_ranks"]
    dup = table[table.duplicated(key, keep=False)]
    if len(dup):
        raise BadInput(
            f"{dup[SOURCE_FILE].iloc[0]}: the same kernel x variant x tuning x size on one machine twice "
            "(also in another file); import one run folder per machine"
        )
    table["mpi_ranks"] = table["mpi_ranks"].astype("Int64")
    rest = [c for c in table.columns if c not in FRONT and c != SOURCE_FILE]
    return table[[*FRONT, *rest, SOURCE_FILE]]
