"""``can-telemetry lake ingest`` and ``can-telemetry plot`` through the real CLI entry point, on an
outbox the real ``file`` uplink wrote and on IoT Hub Avro files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.delivery.uplinks.file import FileUplink
from edge.lake.local import read_table
from tests.support.lake import Fleet, edge_rows, lake_rows


def test_lake_ingest_reads_an_outbox_and_avro_exactly_once(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = FileUplink(tmp_path / "outbox", fsync=False)
    for payload in fleet.payloads["kona"]:
        outbox.send(payload, 1.0)
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    assert main(["lake", "ingest", str(outbox.path), str(hub), "--lake", str(lake)]) == 0
    report = json.loads(capsys.readouterr().out)
    kona = len(fleet.payloads["kona"])
    assert report["payloads"] == len(fleet.messages) + kona
    assert (report["new"], report["duplicates"]) == (len(fleet.messages), kona)
    assert lake_rows(lake) == edge_rows(fleet)


def test_lake_ingest_reports_a_missing_source_and_an_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = str(tmp_path / "lake")
    assert main(["lake", "ingest", str(tmp_path / "nowhere"), "--lake", lake]) == 2
    assert "sources: no such file or folder" in capsys.readouterr().err
    (tmp_path / "x.avro").write_bytes(b"garbage")
    assert main(["lake", "ingest", str(tmp_path / "x.avro"), "--lake", lake]) == 1
    assert "skipped" in capsys.readouterr().err


def test_plot_draws_from_a_lake_and_from_avro_files(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    assert main(["lake", "ingest", str(hub), "--lake", str(lake)]) == 0
    signals = read_table(lake, "signals", ["vehicle", "signal", "choice"]).to_pylist()
    truck = sorted({s["signal"] for s in signals if s["vehicle"] == "corpus-j1939-truck"})
    png, svg = tmp_path / "truck.png", tmp_path / "truck.svg"
    args = ["--vehicle", "corpus-j1939-truck", "--signal", truck[0], "--signal", truck[1]]
    assert main(["plot", str(lake), *args, "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(hub), *args, "--from", "2021-10-25T19:01:00", "-o", str(svg)]) == 0
    assert b"<svg" in svg.read_bytes()[:400]
    out = capsys.readouterr().out
    assert "2 signals" in out
    assert main(["plot", str(lake), "--signal", "NoSuchSignal*", "-o", str(png)]) == 2
    assert main(["plot", str(lake), "--from", "yesterday", "-o", str(png)]) == 2
