"""``can-telemetry decode``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from tests.cli.helpers import cli, run_main


def test_decode_refuses_malformed_payloads_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ctl"
    bad.write_bytes(b"CT\x01\x00\x02garbage")
    result = cli("decode", str(bad))
    assert result.returncode == 3
    assert "bad.ctl" in result.stderr and "Traceback" not in result.stderr


def write_float_payloads(folder: Path) -> None:
    """A schema and a data payload whose float signal is NaN, +inf, -inf and 1.5."""
    from edge.processing.batch import Batch
    from edge.wire.codec import KIND_DATA, KIND_SCHEMA, Codec
    from edge.wire.schema import MessageInfo, Schema, SignalInfo

    schema = Schema(
        ("can0",),
        (MessageInfo(0, "F", 1, False, False, (SignalInfo("x", is_float=True),)),),
    )
    batch = Batch(0.0)
    for tick, value in enumerate([math.nan, math.inf, -math.inf, 1.5]):
        batch.add(0, None, 1_700_000_000_000 + tick, [(0, value)])
    codec = Codec("zstd", 3, 0.001, "car")
    stream = "ab" * 16
    schema_payload = codec.payload(
        KIND_SCHEMA, codec.envelope(None, schema), codec.schema_body(schema), stream, 0
    )
    envelope, body = codec.envelope(batch, schema), codec.data_body(batch, schema)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "1.data.ctl").write_bytes(codec.payload(KIND_DATA, envelope, body, stream, 1).body)
    (folder / "0.schema.ctl").write_bytes(schema_payload.body)


def strict_json(line: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_decode_writes_valid_json_for_nan_and_infinities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_float_payloads(tmp_path / "outbox")
    assert main(["decode", str(tmp_path / "outbox")]) == 0
    rows = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["value"] for r in rows] == ["NaN", "Infinity", "-Infinity", 1.5]


def test_decode_skips_and_reports_foreign_files_in_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = tmp_path / "outbox"
    write_float_payloads(outbox)
    (outbox / "notes.txt").write_text("not a payload")
    (outbox / "broken.ctl").write_bytes(b"CT\x02\x00\x00\x93")
    status = main(["decode", str(outbox)])
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4  # every row of the real payloads
    assert "skipped " + str(outbox / "notes.txt") + ": not a can-telemetry payload" in captured.err
    assert "broken.ctl: bad payload" in captured.err
    assert status == 3  # a malformed payload is an error; a foreign file only a notice
    (outbox / "broken.ctl").unlink()
    assert main(["decode", str(outbox)]) == 0


def test_decode_to_a_bad_output_path_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_float_payloads(tmp_path / "outbox")
    status, err = run_main(
        capsys, "decode", str(tmp_path / "outbox"), "-o", str(tmp_path / "nosuch" / "rows.jsonl")
    )
    assert status == 2
    assert "--output: cannot write" in err and "No such file or directory" in err
