"""Inputs of the lake's tests: payloads the real pipeline's Processor makes from corpus logs, and
the IoT Hub routing / Event Hubs Capture Avro files that carry them (edge.lake.avro's writers,
the hubs' exact schemas)."""

from __future__ import annotations

import datetime as dt
import gc
import itertools
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.wire.codec import Row
from edge.wire.payload import Payload
from tests.support.corpus import LOGS, require_corpus

__all__ = [
    "Fleet",
    "corpus_payloads",
    "demo_lake",
    "edge_rows",
    "fleet",
    "hub_messages",
    "lake_rows",
    "spark",
    "write_avro",
]

#: Two vehicles of the corpus, each with its own stream (frames capped to keep tests quick).
_VEHICLES = (("kona", "0a" * 16, 40_000), ("j1939-truck", "0b" * 16, 30_000))
#: Arrival starts here and advances a second per payload.
ARRIVAL = dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC)


def corpus_payloads(log_id: str, stream: str, limit: int | None) -> list[Payload]:
    """Payloads (schema first, then data) the real Processor makes from a corpus log, numbered
    in ``stream`` as the spool would."""
    import can

    from edge.config.model import parse_config
    from edge.ingest.source import ReplaySource
    from edge.processing.processor import Processor

    require_corpus()
    log = next(entry for entry in LOGS if entry.id == log_id)
    payloads: list[Payload] = []

    def append(build: Any) -> int:
        seq = len(payloads)
        payloads.append(build(stream, seq))
        return seq

    config = parse_config(log.config(batch={"max_bytes": 4096}))
    assert config.replay is not None
    replay = ReplaySource(config.replay, [b.name for b in config.buses])
    frames: list[can.Message] = list(itertools.islice(replay.messages(), limit))
    processor = Processor(config, append)
    processor.process(frames)
    processor.flush()
    return payloads


def hub_messages(payloads: Sequence[Payload], device: str, start: int = 0) -> list[Any]:
    """The hub's view of each payload: body, application properties, system properties,
    enqueued time."""
    return [
        (
            p.body,
            dict(p.properties),
            {
                "connectionDeviceId": device,
                "connectionModuleId": "CanTelemetry",
                "messageId": p.message_id,
                "contentType": p.content_type,
            },
            ARRIVAL + dt.timedelta(seconds=start + i),
        )
        for i, p in enumerate(payloads)
    ]


def write_avro(path: Path, messages: Sequence[Any], capture: bool = False) -> Path:
    """An Avro file as IoT Hub routing (or Event Hubs Capture) writes it."""
    from edge.lake.avro import write_capture, write_routing

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        (write_capture if capture else write_routing)(f, messages)
    return path


_ROW_COLUMNS = ["stream", "seq", *Row._fields]


def lake_rows(lake: Path) -> list[tuple[Any, ...]]:
    """The lake's signals as (stream, seq, *Row) tuples, sorted."""
    from edge.lake.local import read_table

    table = read_table(lake, "signals", _ROW_COLUMNS)
    return sorted(zip(*(table.column(c).to_pylist() for c in _ROW_COLUMNS), strict=True))


def edge_rows(fleet: Fleet) -> list[tuple[Any, ...]]:
    """The edge's decode of the fleet as :func:`lake_rows` gives it (values as floats)."""
    value = 2 + Row._fields.index("value")
    return sorted(
        tuple(float(v) if i == value else v for i, v in enumerate(r)) for r in fleet.edge_rows()
    )


class Fleet:
    """The corpus vehicles' payloads, and the hub's messages for them."""

    def __init__(self) -> None:
        self.payloads: dict[str, list[Payload]] = {}
        self.messages: list[Any] = []
        for log_id, stream, limit in _VEHICLES:
            payloads = corpus_payloads(log_id, stream, limit)
            self.payloads[log_id] = payloads
            self.messages.extend(hub_messages(payloads, f"device-{log_id}", len(self.messages)))

    def edge_rows(self) -> list[tuple[Any, ...]]:
        """What the edge's own decoder makes of every payload: (stream, seq, *row)."""
        from edge.wire.codec import PayloadReader

        out = []
        for payloads in self.payloads.values():
            decoder = PayloadReader()
            for p in payloads:
                for row in decoder.rows(p.body):
                    out.append((p.properties["stream"], int(p.properties["seq"]), *row))
        return out

    def iothub_folder(self, root: Path, messages: Sequence[Any] | None = None) -> Path:
        """The messages as IoT Hub routing lays them out: ``{iothub}/{partition}/YYYY/MM/DD/HH/mm``
        with one file per partition (vehicles hashed to two partitions)."""
        messages = self.messages if messages is None else messages
        by_partition: dict[int, list[Any]] = {}
        for message in messages:
            partition = sum(message[2]["connectionDeviceId"].encode()) % 2
            by_partition.setdefault(partition, []).append(message)
        for partition, items in by_partition.items():
            when = items[0][3]
            folder = root / "hub" / str(partition) / when.strftime("%Y/%m/%d/%H/%M")
            write_avro(folder / "00.avro", items)
        return root / "hub"


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local[2] Spark session per test module (a JVM start costs seconds)."""
    from edge.lake.spark import session

    spark = session("local[2]", "test-lake-spark")
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()
    with warnings.catch_warnings():  # finalize those sockets here, not in another module's test
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    """The corpus fleet's payloads (made once per session)."""
    return Fleet()


@pytest.fixture(scope="session")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake of a short demo drive through the real pipeline (one payload lost, one corrupt)."""
    from edge.cli import main
    from edge.lake.local import ingest

    root = tmp_path_factory.mktemp("demo")
    # 60 s of driving: the harsh-braking campaign captures once (its payload tagged).
    assert main(["demo", "--duration", "60", "--outbox", str(root), "--no-progress"]) == 0
    outbox = root / "outbox"
    data = sorted(outbox.glob("*.data.ctl"))
    data[2].unlink()  # lost on the way: a gap
    shutil.copy(data[3], outbox / "zz-corrupt.data.ctl")
    (outbox / "zz-corrupt.data.ctl").write_bytes(data[3].read_bytes()[:-5])
    schemas = list(outbox.glob("*.schema.ctl"))
    report = ingest([outbox], root / "lake")
    assert report.corrupt == 1 and report.new == len(data) - 1 + len(schemas)
    return root / "lake"
