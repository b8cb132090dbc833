"""The one decode function on real payloads: rows as the edge decodes them, an outcome for every
payload (ok, parked, foreign, corrupt), raw integers, keys for deduplication."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from edge.lake.arrow import SchemaBook, decode, payload_batch, payload_keys
from edge.lake.tables import OUTCOMES, ROW_FIELDS, SIGNALS
from edge.wire.codec import PayloadReader, Row
from tests.support.lake import Fleet


def test_row_fields_become_columns_whatever_they_are() -> None:
    assert [f.name for f in ROW_FIELDS] == list(Row._fields)
    assert set(Row._fields) <= set(SIGNALS.names)


def test_decode_gives_the_edges_rows_and_one_outcome_per_payload(fleet: Fleet) -> None:
    payloads = fleet.payloads["j1939-truck"]
    schema, data = payloads[0], payloads[1:]
    bodies = [p.body for p in data] + [schema.body]  # the schema last: still used
    bodies += [b"PK\x03\x04 a zip file", data[0].body[:-9]]
    book = SchemaBook()
    decoded = decode(payload_batch(bodies, device="dev-1"), book)
    assert decoded.outcomes.schema == OUTCOMES and decoded.rows.schema == SIGNALS
    status = decoded.outcomes.column("status").to_pylist()
    assert status == ["ok"] * len(payloads) + ["foreign", "corrupt"]
    assert decoded.outcomes.column("body").to_pylist()[-2:] == bodies[-2:]
    assert decoded.outcomes.column("body").null_count == len(payloads)
    decoder = PayloadReader()
    expected = [r for p in payloads for r in decoder.rows(p.body)]
    columns = decoded.rows.select(list(Row._fields)).to_pylist()
    assert sorted(tuple(r.values()) for r in columns) == sorted(
        (*r[:4], float(r.value), *r[5:]) for r in expected
    )
    assert set(decoded.rows.column("vehicle").to_pylist()) == {"corpus-j1939-truck"}
    assert set(decoded.rows.column("device").to_pylist()) == {"dev-1"}
    assert len(decoded.payload_index) == decoded.rows.num_rows
    # Integer-coded signals: physical = raw * scale + offset, with the schema's scale/offset.
    infos = {
        (m.name, s.name): s
        for m in book.decoder.schemas[schema.properties["schema"]].messages
        for s in m.signals
    }
    for row in decoded.rows.to_pylist()[:2000]:
        info = infos[(row["message"], row["signal"])]
        if info.is_float:
            assert row["raw"] is None
        else:
            assert info.physical(row["raw"]) == row["value"]


def test_data_without_its_schema_is_parked_with_its_body_and_envelope(fleet: Fleet) -> None:
    data = fleet.payloads["kona"][1]
    decoded = decode(payload_batch([data.body]), SchemaBook())
    outcome = decoded.outcomes.to_pylist()[0]
    assert outcome["status"] == "parked" and outcome["body"] == data.body
    assert (outcome["stream"], outcome["seq"]) == ("0a" * 16, 1)
    assert decoded.rows.num_rows == 0


def test_keys_for_deduplication(fleet: Fleet) -> None:
    bodies = [fleet.payloads["kona"][2].body, b"hello", None]
    keyed = payload_keys(payload_batch(bodies))  # type: ignore[arg-type]
    assert keyed.column("key").to_pylist() == [
        f"{'0a' * 16}:2",
        "sha256:" + hashlib.sha256(b"hello").hexdigest()[:16],
        "sha256:" + hashlib.sha256(b"").hexdigest()[:16],
    ]
    assert keyed.column("kind").to_pylist() == ["data", None, None]
    assert isinstance(keyed, pa.RecordBatch)
