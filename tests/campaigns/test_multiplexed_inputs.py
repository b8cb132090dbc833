"""Condition inputs in multiplexed messages, read without decoding the whole message: every
reader the engine builds, on every database of the corpus, against cantools' decode; and the
engine's quick path with such a reader against its general path, on the corpus logs."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import can
import pytest
from cantools.database.can import Message

from edge.campaigns.engine import CampaignEngine, _Decoding, _Undefined
from edge.config.model import parse_config
from edge.processing.processor import Processor
from tests.campaigns.test_engine import Collector
from tests.campaigns.test_taps import alone, numeric_values
from tests.processing.test_differential import database_files, load
from tests.processing.test_fused import branches
from tests.processing.test_processor import frames_of
from tests.support.corpus import CORPUS, LOGS, CorpusLog, require_corpus

REFUSED = object()  # cantools refuses the frame


def cantools_value(message: Message, data: bytes, name: str) -> Any:
    try:
        return message.decode(data, False, False).get(name)
    except Exception:
        return REFUSED


def reader_value(read: Any, data: bytes) -> Any:
    try:
        return read(data)
    except _Undefined:
        return REFUSED


def payloads(message: Message, seed: int) -> list[bytes]:
    """Random payloads, and one per multiplexer branch (encoded by cantools, the rest 0)."""
    rng = random.Random(seed)
    out = [rng.randbytes(message.length) for _ in range(12)]
    zeros = {signal.name: 0 for signal in message.signals}
    for assignment in branches(message.signal_tree, cap=60):
        try:
            out.append(bytes(message.encode({**zeros, **assignment}, scaling=False, strict=False)))
        except Exception:  # cantools cannot encode that branch: random payloads cover it
            continue
    return out


def check_database(path: Path) -> tuple[int, int]:
    """(readers built, payloads compared) for the multiplexed messages of ``path``."""
    database = load(path).db
    built = compared = 0
    for number, message in enumerate(database.messages):
        if not message.is_multiplexed() or not 0 < message.length <= 64:
            continue
        decoding = _Decoding(message)
        data = payloads(message, number)
        for signal in message.signals:
            read = decoding.multiplexed(message, signal.name)
            if read is None:
                continue
            built += 1
            for payload in data:
                want = cantools_value(message, payload, signal.name)
                got = reader_value(read, payload)
                assert got is want or (type(got) is type(want) and got == want), (
                    f"{path.name}: {message.name}.{signal.name} on {payload.hex()}: "
                    f"read {got!r}, cantools {want!r}"
                )
                compared += 1
    return built, compared


@pytest.mark.parametrize("path", database_files(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_reader_gives_what_cantools_gives(path: Path) -> None:
    check_database(path)  # load() skips a database cantools cannot load, with the reason


def test_readers_are_built_for_the_corpus_multiplexed_inputs() -> None:
    """The readers exist where they matter: Tesla's multiplexed status messages and the OBD-II
    PID multiplexers (nested under the service), not only in principle."""
    corpus = require_corpus()
    tesla = check_database(corpus / "tesla_model3" / "Model3CAN_joshwardell.dbc")
    obd = check_database(corpus / "css_obd2_gnss" / "CSS-Electronics-OBD2-v1.4.dbc")
    assert tesla[0] > 100 and obd[0] > 100
    assert tesla[1] > 1000 and obd[1] > 1000


Key = tuple[str, int, bool]


def multiplexed_campaigns(
    log: CorpusLog, frames: list[can.Message]
) -> tuple[list[dict[str, Any]], list[Key]]:
    """Conditions on the multiplexed signals the log's frames carry: for the three busiest
    multiplexed messages, a rising edge of a signal that moves against its median, and a
    while_true ``changed()`` of it; and the frame IDs (bus, ID, extended) of those messages."""
    processor = Processor(parse_config(log.config()), Collector())
    buses = {b.name: b for b in processor.bus_decoders}
    counts = Counter(
        (str(m.channel), m.arbitration_id, m.is_extended_id)
        for m in frames
        if not (m.is_error_frame or m.is_remote_frame) and m.channel in buses
    )
    out: list[dict[str, Any]] = []
    keys: list[Key] = []
    seen: set[str] = set()
    for (channel, frame_id, extended), _ in counts.most_common():
        message = buses[channel].message(frame_id, extended)
        if message is None or not message.is_multiplexed() or message.name in seen:
            continue
        seen.add(message.name)
        decoding = _Decoding(message)
        values = numeric_values(message, frames, (channel, frame_id, extended))
        moving = [
            n
            for n, v in sorted(values.items())
            if len(set(v)) > 2
            and not message.get_signal_by_name(n).is_multiplexer
            and decoding.multiplexed(message, n) is not None
        ]
        if not moving:
            continue
        keys.append((channel, frame_id, extended))
        signal = f"{message.name}.{moving[0]}"
        median = statistics.median(values[moving[0]])
        n = len(out)
        out.append(
            {
                "name": f"edge{n}",
                "condition": f"{signal} > {median!r}",
                "signals": [f"{message.name}.*"],
                "min_interval": 1.0,
                "before": 0.5,
                "after": 0.2,
            }
        )
        out.append(
            {
                "name": f"change{n}",
                "condition": f"changed({signal})",
                "trigger": "while_true",
                "signals": [f"{message.name}.*"],
                "min_interval": 2.0,
                "before": 0.2,
                "after": 0.2,
            }
        )
        if len(out) == 6:
            break
    return out, keys


def with_garbled(frames: list[can.Message], keys: list[Key]) -> list[can.Message]:
    """``frames`` with, after every 20th frame of ``keys``, a frame of the same ID and time
    with random bytes: multiplexer values no branch defines, which cantools refuses."""
    rng = random.Random(11)
    out: list[can.Message] = []
    seen = 0
    for m in frames:
        out.append(m)
        if (str(m.channel), m.arbitration_id, m.is_extended_id) in keys:
            seen += 1
            if seen % 20 == 0:
                data = bytearray(rng.randbytes(len(m.data)))
                out.append(
                    can.Message(
                        timestamp=m.timestamp,
                        arbitration_id=m.arbitration_id,
                        is_extended_id=m.is_extended_id,
                        channel=m.channel,
                        data=data,
                        is_fd=m.is_fd,
                    )
                )
    return out


def without_quick_path(engine: CampaignEngine) -> None:
    """Every input read the general way (CampaignEngine._inputs), none on the quick path."""
    for entry in engine._entries:
        entry.quick = None


# Garbled OBD-II frames name services and PIDs the database does not define; Tesla's garbled
# frames all decode (its multiplexer leaves no value of its bits undefined).
@pytest.mark.parametrize(("log_id", "refused"), [("obd2-gnss", True), ("tesla", False)])
def test_multiplexed_inputs_on_the_quick_path_give_what_the_general_path_gives(
    log_id: str, refused: bool
) -> None:
    """A multiplexed input read alone in the engine's per-frame path (its reader: None where
    the frame leaves the signal out, refused frames counted as decode errors) triggers exactly
    as the general path, which decodes the message's inputs and updates the state, does: the
    same captures, counters and history, on the corpus logs with multiplexed messages and
    frames of theirs garbled."""
    require_corpus()
    log = next(log for log in LOGS if log.id == log_id)
    frames = frames_of(log, None, 60_000)
    campaigns, keys = multiplexed_campaigns(log, frames)
    assert len(campaigns) >= 2, campaigns
    frames = with_garbled(frames, keys)
    data = log.config(campaigns=campaigns)
    seen: list[CampaignEngine] = []
    got, want = alone(data, frames, seen.append), alone(data, frames, without_quick_path)
    assert any(e.quick is not None and e.readers for e in seen[0]._entries)  # multiplexed ones
    assert got.counters == want.counters  # type: ignore[attr-defined]
    assert got.history == want.history  # type: ignore[attr-defined]
    assert got.decoded() == want.decoded()
    assert sum(c["triggers"] for c in got.counters.values()) > 0  # type: ignore[attr-defined]
    assert (got.history["decodeErrors"] > 0) is refused  # type: ignore[attr-defined]
