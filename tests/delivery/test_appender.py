"""PayloadAppender on a real SQLite spool: payloads built by the codec and numbered by the spool,
properties and priority passed on, a replaced spool file noticed as a new stream, and a refusal
raised to the writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.delivery.appender import PayloadAppender
from edge.delivery.spool import Spool
from edge.errors import SpoolError
from edge.wire.codec import KIND_DATA, KIND_SCHEMA, Codec

CODEC = Codec("zstd", 3, 0.001, "car")
ENVELOPE: dict[str, Any] = {"schema": "ab" * 8, "t0": 0, "t1": 10, "res": 1_000_000}


def test_payloads_are_built_numbered_and_sized(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    try:
        appender = PayloadAppender(spool.append, CODEC)
        schema = {**ENVELOPE, "vehicle": "car", "created": 1}
        first = appender.append(KIND_SCHEMA, schema, CODEC.compress(b"schema"))
        second = appender.append(
            KIND_DATA, ENVELOPE, CODEC.compress(b"data"), priority=0, properties={"campaign": "c"}
        )
        assert appender.stream == spool.stream_id
        assert first[1] is False and second[1] is False  # one stream all along
        stored = spool.oldest()  # priority 0 first, whatever the order of appends
        assert stored is not None and stored.seq == 1
        assert stored.payload.properties["campaign"] == "c"
        assert stored.payload.properties["kind"] == "data"
        assert len(stored.payload.body) == second[0]
        assert stored.payload.properties["seq"] == "1"
    finally:
        spool.close()


def test_a_new_spool_file_is_a_new_stream(tmp_path: Path) -> None:
    spools = [Spool(tmp_path / "a.db")]
    try:
        appender = PayloadAppender(lambda build, **kw: spools[-1].append(build, **kw), CODEC)
        assert appender.append(KIND_DATA, ENVELOPE, b"")[1] is False
        spools.append(Spool(tmp_path / "b.db"))  # as when a corrupt spool file is replaced
        assert appender.append(KIND_DATA, ENVELOPE, b"")[1] is True
        assert appender.append(KIND_DATA, ENVELOPE, b"")[1] is False
        assert appender.stream == spools[-1].stream_id != spools[0].stream_id
    finally:
        for spool in spools:
            spool.close()


def test_a_refusal_reaches_the_writer_and_moves_no_stream(tmp_path: Path) -> None:
    spools = [Spool(tmp_path / "a.db", max_bytes=300_000)]
    try:
        appender = PayloadAppender(lambda build, **kw: spools[-1].append(build, **kw), CODEC)
        with pytest.raises(SpoolError):
            appender.append(KIND_DATA, ENVELOPE, b"x" * 1_000_000)  # can never fit
        assert appender.stream is None  # nothing was kept
        appender.append(KIND_DATA, ENVELOPE, b"")
        spools.append(Spool(tmp_path / "b.db", max_bytes=300_000))
        with pytest.raises(SpoolError):  # the first payload of the new stream is refused...
            appender.append(KIND_DATA, ENVELOPE, b"x" * 1_000_000)
        # ...so the next one kept still opens it (its writer sends the schema again then)
        assert appender.append(KIND_DATA, ENVELOPE, b"")[1] is True
    finally:
        for spool in spools:
            spool.close()
