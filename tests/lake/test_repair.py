"""The repair job (edge.lake.repair) on Spark local mode, on a lake the real streaming job wrote
with duplicates that got past its watermark (a one-hour watermark stands in for 8 days): every
row ends exactly once and equal to the edge's decode, only the partitions holding a copy to
remove are rewritten, a repair killed (exception between partitions, SIGKILL of driver and JVM
after a journal) loses nothing and a rerun finishes it, and a second run changes nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.lake.local import ingest, read_table
from tests.support.lake import Fleet, edge_rows, lake_rows, write_avro

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (.ci/setup)"),
    # PySpark 3.5 leaves its local result sockets to the garbage collector (collect()).
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    # and checks the pyarrow version with distutils' LooseVersion.
    pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning"),
]

TRUCK, KONA = "0b" * 16, "0a" * 16
#: Event dates: the truck's (epoch time base), the kona's first copies and its late re-sends
#: (relative time base: placed by arrival).
TRUCK_DATE, KONA_DATE, RESENT_DATE = "2021-10-25", "2026-12-07", "2026-12-10"


@dataclass
class LateLake:
    """A lake the stream wrote, with the late copies it let through."""

    path: Path
    late: list[tuple[str, int]]  # keys published twice
    files: list[Path]  # the Avro files the stream took


@pytest.fixture(scope="module")
def late_lake(spark: Any, fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> LateLake:
    """The streaming job with a one-hour watermark, one micro-batch per file (three, the fewest
    that let copies past): the truck, and the kona a day later, which moves the watermark past
    the truck's first copies; three truck payloads re-sent two days after their first copies
    (same event date), with a foreign message that moves the watermark past the kona's; two of
    the kona's three data payloads re-sent four days after theirs (another arrival date, so
    another partition)."""
    from edge.lake.spark import start_stream

    root = tmp_path_factory.mktemp("late")
    truck = [m for m in fleet.messages if m[1]["stream"] == TRUCK]
    kona = [m for m in fleet.messages if m[1]["stream"] == KONA]
    day = dt.timedelta(days=1)

    def moved(messages: list[Any], by: dt.timedelta) -> list[Any]:
        return [(b, p, s, t + by) for b, p, s, t in messages]

    batches = [
        truck + moved(kona, day),
        [*moved(truck[5:8], 2 * day), (b"x", {}, kona[0][2], kona[0][3] + 4 * day)],
        moved(kona[1:3], 4 * day),
    ]
    incoming, lake = root / "incoming", root / "lake"
    incoming.mkdir()
    query = start_stream(spark, str(incoming), lake, str(root / "cp"), watermark="1 hour")
    try:
        for i, messages in enumerate(batches):
            write_avro(incoming / f"{i}.avro", messages)
            query.processAllAvailable()
    finally:
        query.stop()
    late = [(m[1]["stream"], int(m[1]["seq"])) for m in [*truck[5:8], *kona[1:3]]]
    keys = Counter(_keys(lake))
    assert sorted(k for k, n in keys.items() if n > 1) == sorted(late)
    assert len(keys) == len(fleet.messages)
    dates = {p.name for p in (lake / "payloads").iterdir()}
    # (the truck's schema payload is placed by its arrival)
    assert dates == {f"date={d}" for d in ("2026-12-06", TRUCK_DATE, KONA_DATE, RESENT_DATE)}
    return LateLake(lake, late, sorted(incoming.glob("*.avro")))


def _keys(lake: Path) -> list[tuple[str, int]]:
    payloads = read_table(lake, "payloads", ["stream", "seq"])
    columns = (payloads.column("stream").to_pylist(), payloads.column("seq").to_pylist())
    return list(zip(*columns, strict=True))


def _files(lake: Path, *tables: str) -> dict[str, int]:
    """Every Parquet file of ``tables`` (or all) with its mtime."""
    folders = [lake / t for t in tables] if tables else [lake]
    return {
        str(p.relative_to(lake)): p.stat().st_mtime_ns
        for folder in folders
        for p in folder.rglob("*.parquet")
    }


def _copy(late: LateLake, tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(late.path, lake)  # copy2: names and mtimes as they were
    return lake


def test_repair_keeps_each_key_once_and_rewrites_only_partitions_with_copies(
    spark: Any, fleet: Fleet, late_lake: LateLake, tmp_path: Path
) -> None:
    from edge.lake.repair import check_local, repair

    lake = _copy(late_lake, tmp_path)
    assert check_local(lake).duplicate_keys == len(late_lake.late)
    # The single-machine ingest shares the lake: its index is built from the stream's files.
    assert ingest(late_lake.files, lake).new == 0
    first_arrival = {
        (r["stream"], r["seq"]): r["enqueued"]
        for r in sorted(
            read_table(lake, "payloads").to_pylist(), key=lambda r: r["enqueued"], reverse=True
        )
    }
    before = _files(lake)
    late_rows = sum(1 for r in edge_rows(fleet) if (r[0], r[1]) in set(late_lake.late))

    report = repair(spark, lake)

    assert report.as_dict() | {"run": "-"} == {
        "run": "-",
        "engine": "spark",
        "duplicate_keys": len(late_lake.late),
        "partitions": [TRUCK_DATE, RESENT_DATE],
        "payloads_removed": len(late_lake.late),
        "signals_removed": late_rows,
        "ambiguous": 0,
    }
    assert lake_rows(lake) == edge_rows(fleet)
    assert sorted(_keys(lake)) == sorted(set(_keys(lake)))
    # The first arrival is the copy kept.
    kept = {
        (r["stream"], r["seq"]): r["enqueued"] for r in read_table(lake, "payloads").to_pylist()
    }
    assert kept == first_arrival
    after = _files(lake)
    for table in ("payloads", "signals"):
        untouched = f"{table}/date={KONA_DATE}/"
        old = {p: t for p, t in before.items() if p.startswith(untouched)}
        assert old and {p: t for p, t in after.items() if p.startswith(untouched)} == old
        truck = {p for p in after if p.startswith(f"{table}/date={TRUCK_DATE}/")}
        assert truck and all(f"part-{report.run}d" in p for p in truck)
        assert not any(p.startswith(f"{table}/date={RESENT_DATE}/") for p in after)
    assert _files(lake, "quarantine", "schemas") == _files(late_lake.path, "quarantine", "schemas")
    streams = {s["stream"]: s for s in read_table(lake, "streams").to_pylist()}
    assert streams[TRUCK]["payloads"] == len(fleet.payloads["j1939-truck"])
    assert streams[KONA]["payloads"] == len(fleet.payloads["kona"])

    again = repair(spark, lake)
    assert (again.duplicate_keys, again.partitions, again.payloads_removed) == (0, [], 0)
    assert _files(lake) == after
    # Its index follows the rewritten files: the same files again add nothing.
    report_again = ingest(late_lake.files, lake)
    assert (report_again.new, report_again.duplicates) == (0, len(fleet.messages) + 5)
    assert lake_rows(lake) == edge_rows(fleet)


def test_a_repair_failing_between_partitions_loses_nothing_and_a_rerun_finishes(
    spark: Any, fleet: Fleet, late_lake: LateLake, tmp_path: Path
) -> None:
    from edge.lake.repair import repair

    lake = _copy(late_lake, tmp_path)

    def fail(date: dt.date) -> None:
        raise OSError(f"injected after {date}")

    with pytest.raises(OSError, match=f"injected after {TRUCK_DATE}"):
        repair(spark, lake, after_partition=fail)
    assert set(lake_rows(lake)) == set(edge_rows(fleet))  # every row at least once
    left = Counter(_keys(lake))
    assert sorted(k for k, n in left.items() if n > 1) == [
        k for k in late_lake.late if k[0] == KONA
    ]
    report = repair(spark, lake)
    assert (report.partitions, report.payloads_removed) == ([RESENT_DATE], 2)
    assert lake_rows(lake) == edge_rows(fleet)


_KILLED_REPAIR = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import edge.lake.local as local
    import edge.lake.repair as job

    def publish_and_die(lake, run, moves, deletes):
        # The journal is written (the commit point); the driver and JVM die before any file of
        # the partition is deleted or renamed.
        local.publish(lake, run, moves, deletes, before_apply=lambda: os.killpg(0, signal.SIGKILL))

    job.publish = publish_and_die
    from edge.lake.spark import session
    job.repair(session("local[2]", "killed"), Path(sys.argv[1]))
    """
)


def test_a_repair_killed_after_its_journal_is_rolled_forward_by_the_rerun(
    spark: Any, fleet: Fleet, late_lake: LateLake, tmp_path: Path
) -> None:
    from edge.lake.repair import repair

    lake = _copy(late_lake, tmp_path)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_REPAIR, str(lake)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        timeout=600,
        start_new_session=True,  # its own process group: the JVM dies with the driver
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert len(list((lake / "_journal").glob("*.json"))) == 1
    assert set(lake_rows(lake)) == set(edge_rows(fleet))
    report = repair(spark, lake)  # rolls the first partition forward, then does the second
    assert report.partitions == [RESENT_DATE]
    assert not (lake / "_journal").exists() or not list((lake / "_journal").iterdir())
    assert lake_rows(lake) == edge_rows(fleet)


def test_lake_repair_command(
    spark: Any, late_lake: LateLake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = str(_copy(late_lake, tmp_path))
    # The local engine counts and says so, exit status 1 while duplicates remain.
    assert main(["lake", "repair", "--lake", lake, "--engine", "local"]) == 1
    assert json.loads(capsys.readouterr().out)["duplicate_keys"] == len(late_lake.late)
    # A date range: only the truck's partition is looked at (the kona's copies are later).
    assert main(["lake", "repair", "--lake", lake, "--to", "2026-12-01"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["partitions"], report["payloads_removed"]) == ([TRUCK_DATE], 3)
    assert main(["lake", "repair", "--lake", lake, "--from", RESENT_DATE]) == 0
    assert json.loads(capsys.readouterr().out)["duplicate_keys"] == 0  # first copies before
    assert main(["lake", "repair", "--lake", lake]) == 0
    assert json.loads(capsys.readouterr().out)["partitions"] == [RESENT_DATE]
    assert main(["lake", "repair", "--lake", lake, "--engine", "local"]) == 0
    assert json.loads(capsys.readouterr().out)["duplicate_keys"] == 0
    assert main(["lake", "repair", "--lake", str(tmp_path / "nowhere")]) == 2
    assert main(["lake", "repair", "--lake", lake, "--from", "yesterday"]) == 2
