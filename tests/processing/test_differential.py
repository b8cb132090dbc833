"""The whole processing stage against cantools, on every database of the corpus (issue 10).

For every database cantools loads (strictly, relaxed, or after the tolerant load path's repairs)
and every message in it, frames are generated: random payloads; every multiplexer branch the
database defines and values it does not; all-zero and all-ones; CAN FD lengths; frames shorter
and longer than the message; the message's ID as a standard and as an extended ID (so 29-bit IDs
below 0x800 and 11-bit IDs that share a number with a 29-bit one are both covered); unknown IDs;
error and remote frames; and, on J1939 buses, varying priority and source address. They go
through the real :class:`Processor` (sampling mode ``every``, and the default lossless
``on_change``), the payloads are read back with :class:`PayloadReader`, and every row must be
what cantools' ``decode_message(..., scaling=True)`` gives for its frame: same message, signal,
time at the configured resolution, physical value of the same type (NaN equal to NaN), choice.
Frames cantools refuses must be counted by reason, and every frame accounted for:
``frames = decoded + repeated + skipped + lost`` with ``lost == 0``.

A database that cannot be loaded at all is skipped with its reason (shown by ``-ra``). The sweep
keeps the suite's time to about a minute (45 s of CPU here); ``DEEP=1`` generates ten times as
many random payloads per message.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest
from cantools.database.can import Database, Message
from cantools.database.errors import DecodeError
from cantools.j1939 import pgn_from_frame_id

from edge.config.model import parse_config
from edge.errors import DatabaseLoadError
from edge.processing.database import load_database_repaired
from edge.processing.processor import Processor
from edge.wire.codec import PayloadReader
from tests.processing.test_fused import branches, raw_value
from tests.processing.test_processor import Collector
from tests.support.corpus import CORPUS, require_corpus

FORMATS = {".dbc", ".arxml", ".kcd", ".sym"}
#: Random payloads per message (more with DEEP=1).
RANDOM_PAYLOADS = 60 if os.environ.get("DEEP") else 6
FD_LENGTHS = (12, 16, 20, 24, 32, 48, 64)
STEP = 0.001  # seconds between frames: one tick at the default 1 ms resolution
Key = tuple[str, Any, str]  # message, source address, signal


def database_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    files = [p for p in CORPUS.rglob("*") if p.suffix.lower() in FORMATS and p.is_file()]
    return sorted(files)


def _ids(paths: Sequence[Path]) -> list[str]:
    return [str(p.relative_to(CORPUS)) for p in paths]


@dataclass(frozen=True)
class Loaded:
    path: Path
    db: Database
    strict: bool


def load(path: Path) -> Loaded:
    """Strictly if cantools allows, else relaxed (with repairs); skip with the reason if not."""
    try:
        return Loaded(path, load_database_repaired(path, strict=True, cache=False).database, True)
    except DatabaseLoadError:
        pass
    try:
        loaded = load_database_repaired(path, strict=False, cache=False)
    except DatabaseLoadError as exc:
        pytest.skip(f"cantools cannot load it: {exc.reason}")
    return Loaded(path, loaded.database, False)


# --- frames -----------------------------------------------------------------------------------


def payloads(message: Message, rng: random.Random) -> Iterator[bytes]:
    length = message.length
    yield bytes(length)
    yield b"\xff" * length
    for _ in range(RANDOM_PAYLOADS):
        yield rng.randbytes(length)
    yield rng.randbytes(length)  # and again: a repeated payload
    if message.is_multiplexed():
        for assignment in branches(message.signal_tree, cap=100):
            values = {s.name: raw_value(s, rng) for s in message.signals}
            values.update(assignment)
            try:
                data = bytes(message.encode(values, scaling=False, strict=False))
            except Exception:  # a branch cantools cannot encode (e.g. float limits)
                continue
            yield data
            yield data  # repeated: the on_change path keeps it once
    # Lengths the message does not have: shorter, longer, CAN FD lengths.
    if length:
        yield rng.randbytes(length - 1)
    yield rng.randbytes(length + 1) if length < 64 else rng.randbytes(64)
    for fd in FD_LENGTHS:
        if fd > length:
            yield rng.randbytes(fd)
            break


def frames_for(db: Database, rng: random.Random, j1939: bool) -> list[can.Message]:
    """Frames of every message (and unknown IDs, error and remote frames), interleaved."""
    per_message: list[list[tuple[int, bool, bytes]]] = []
    for message in db.messages:
        if message.is_container:
            continue
        frames = []
        ids = [(message.frame_id, bool(message.is_extended_frame))]
        # The same number as the other kind of ID (a 29-bit ID below 0x800 as standard, an
        # 11-bit ID as extended): a different message, or an unknown one.
        if message.frame_id <= 0x7FF:
            ids.append((message.frame_id, not message.is_extended_frame))
        for data in payloads(message, rng):
            frame_id, extended = ids[0] if rng.random() < 0.85 else rng.choice(ids)
            if j1939 and extended:
                frame_id = (
                    (frame_id & ~0x1C0000FF)
                    | rng.randrange(8) << 26
                    | rng.choice((frame_id & 0xFF, frame_id & 0xFF, rng.randrange(256)))
                )
            frames.append((frame_id, extended, data))
        per_message.append(frames)
    unknown = [(rng.randrange(0x800), False, rng.randbytes(8)) for _ in range(20)]
    unknown += [(rng.randrange(0x20000000), True, rng.randbytes(8)) for _ in range(20)]
    per_message.append(unknown)
    out: list[can.Message] = []
    t = 1_700_000_000.0
    queues = [list(reversed(f)) for f in per_message]
    while queues:
        queue = rng.choice(queues)
        frame_id, extended, data = queue.pop()
        if not queue:
            queues.remove(queue)
        t += STEP
        out.append(
            can.Message(
                timestamp=round(t, 3),
                arbitration_id=frame_id,
                is_extended_id=extended,
                data=data,
                is_fd=len(data) > 8,
                channel="can0",
                check=False,
            )
        )
        if rng.random() < 0.01:
            t += STEP
            kind = rng.choice(("error", "remote"))
            out.append(
                can.Message(
                    timestamp=round(t, 3),
                    arbitration_id=rng.randrange(0x800),
                    is_error_frame=kind == "error",
                    is_remote_frame=kind == "remote",
                    channel="can0",
                    check=False,
                )
            )
    return out


# --- what cantools gives ------------------------------------------------------------------------


def tick(t: float) -> float:
    return round(t * 1000) * 1_000_000 / 1_000_000_000


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    return bool(a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


class Reference:
    """cantools' decode of every frame, and how many frames it refuses."""

    def __init__(self, db: Database, j1939: bool) -> None:
        self.db = db
        self.j1939 = j1939
        self.by_pgn: dict[int, Message] = {}
        for m in reversed(db.messages):
            if m.is_extended_frame:
                self.by_pgn[pgn_from_frame_id(m.frame_id)] = m
        #: (time, physical value, choice, raw value) of every signal of every decoded frame, by
        #: message (a database may have two of one name), name, source address and signal
        self.values: dict[tuple[int, str, Any, str], list[tuple[float, Any, Any, Any]]]
        self.values = defaultdict(list)
        self.refused = 0  # error, remote, unknown, undecodable frames
        self.empty = 0  # frames of messages without signals (nothing to keep)

    def message(self, msg: can.Message) -> Message | None:
        try:
            return self.db.get_message_by_frame_id(
                msg.arbitration_id, force_extended_id=msg.is_extended_id
            )
        except KeyError:
            if self.j1939 and msg.is_extended_id:
                return self.by_pgn.get(pgn_from_frame_id(msg.arbitration_id))
            return None

    def add(self, msg: can.Message) -> None:
        if msg.is_error_frame or msg.is_remote_frame:
            self.refused += 1
            return
        message = self.message(msg)
        if message is None:
            self.refused += 1
            return
        if not message.signals:
            self.empty += 1
            return
        try:
            values = message.decode(bytes(msg.data), decode_choices=False)
        except DecodeError:
            self.refused += 1
            return
        try:
            named = message.decode(bytes(msg.data))
        except ValueError:  # cantools cannot look a NaN up in a float signal's choices
            named = values
        raw = message.decode(bytes(msg.data), decode_choices=False, scaling=False)
        source = msg.arbitration_id & 0xFF if self.j1939 and msg.is_extended_id else None
        assert isinstance(values, dict) and isinstance(named, dict) and isinstance(raw, dict)
        for name, value in values.items():
            choice = named[name]
            self.values[(id(message), message.name, source, name)].append(
                (tick(msg.timestamp), value, getattr(choice, "name", None), raw[name])
            )


def on_change(values: list[tuple[float, Any, Any, Any]]) -> list[tuple[float, Any, Any, Any]]:
    """Lossless on-change sampling, as documented: a row whenever the *raw* value changes (a
    float signal's raw value may change where its physical value rounds to the same one);
    NaN followed by NaN is no change. No heartbeat falls due: the traffic is shorter."""
    kept: list[tuple[float, Any, Any, Any]] = []
    for row in values:
        if not kept or not (row[3] == kept[-1][3] or same(row[3], kept[-1][3])):
            kept.append(row)
    return kept


# --- the stage under test ------------------------------------------------------------------------


def run(loaded: Loaded, frames: list[can.Message], mode: str, j1939: bool) -> tuple[Any, Any]:
    config = parse_config(
        {
            "vehicle_id": "differential",
            "buses": [
                {
                    "name": "can0",
                    "dbc": [str(loaded.path)],
                    "strict": loaded.strict,
                    "j1939": j1939,
                    "kernel_filters": False,
                }
            ],
            "signals": {"mode": mode, "heartbeat": 0},
        }
    )
    collector = Collector()
    processor = Processor(config, collector)
    for start in range(0, len(frames), 256):  # the sources' chunks
        processor.process(frames[start : start + 256])
    processor.flush()
    decoder = PayloadReader()
    rows: dict[Key, list[tuple[float, Any, Any]]] = defaultdict(list)
    for payload in collector.payloads:
        for row in decoder.rows(payload.body):
            rows[(row.message, row.source, row.signal)].append((row.time, row.value, row.choice))
    return rows, processor.stats()


def check(loaded: Loaded, j1939: bool = False, frames: list[can.Message] | None = None) -> None:
    """The stage under test gives what cantools gives for ``frames`` (by default generated
    from every message of the database), in both sampling modes, every frame accounted for."""
    if frames is None:
        rng = random.Random(str(loaded.path.name) + str(j1939))
        frames = frames_for(loaded.db, rng, j1939)
    reference = Reference(loaded.db, j1939)
    for msg in frames:
        reference.add(msg)
    for mode in ("every", "on_change"):
        rows, stats = run(loaded, frames, mode, j1939)
        decode = stats.decode
        # Every frame accounted for, nothing lost, refusals counted by reason.
        assert stats.frames == len(frames)
        assert decode.lost == 0 and stats.lost_rows == 0, decode.lost_reasons
        skipped = sum(decode.skipped.values())
        assert decode.decoded + decode.repeated + skipped == len(frames)
        # What cantools refuses is skipped; frames of messages without signals too.
        assert skipped == reference.refused + reference.empty
        assert decode.skipped.get("not_selected", 0) == reference.empty
        # Row for row what cantools decodes.
        expected: dict[Key, list[tuple[float, Any, Any, Any]]] = defaultdict(list)
        for (_, name, source, signal), values in reference.values.items():
            expected[(name, source, signal)] += values if mode == "every" else on_change(values)
        keys = set(expected) | set(rows)
        for key in sorted(keys, key=repr):
            # Sorted by time: rows of two messages of one name (a database may define both)
            # come message by message in a payload.
            want = sorted(expected.get(key, []), key=lambda row: row[0])
            got = sorted(rows.get(key, []), key=lambda row: row[0])
            assert len(got) == len(want), (mode, key, len(got), len(want))
            for w, g in zip(want, got, strict=True):
                assert w[0] == g[0] and same(w[1], g[1]) and w[2] == g[2], (mode, key, w, g)


DATABASES = database_files()


@pytest.mark.parametrize("path", DATABASES or [None], ids=_ids(DATABASES) or ["no-corpus"])
def test_processing_equals_cantools(path: Path | None) -> None:
    require_corpus()
    assert path is not None
    loaded = load(path)
    check(loaded)
    if any(m.is_extended_frame for m in loaded.db.messages) and "j1939" in path.name.lower():
        check(loaded, j1939=True)


def test_the_sweep_covers_the_whole_corpus() -> None:
    require_corpus()
    assert len(DATABASES) >= 220
    counts = Counter(p.suffix.lower() for p in DATABASES)
    assert counts[".dbc"] > 150 and counts[".arxml"] and counts[".kcd"] and counts[".sym"]


# --- regressions of issue 10, by name ------------------------------------------------------------


def test_passat_motor_2_does_not_cost_other_messages_their_frames() -> None:
    """vw_pq.dbc writes Motor_2's multiplexer with a lower-case ``m``: cantools sees plain
    overlapping signals and decodes none of the four multiplexed ones. Motor_2 frames with every
    MO2_Mp_Code value, mixed with every other message, decode exactly as cantools decodes them,
    and no frame of any message is lost (it used to cost every 256-frame chunk it was in)."""
    require_corpus()
    loaded = load(CORPUS / "dbc_corpus" / "opendbc" / "vw_pq.dbc")
    motor_2 = loaded.db.get_message_by_name("Motor_2")
    rng = random.Random(2)
    frames = frames_for(loaded.db, rng, j1939=False)
    extra = []
    for code in range(4):  # MO2_Mp_Code: bits 6-7 of byte 0
        for _ in range(5):
            data = bytearray(rng.randbytes(8))
            data[0] = (data[0] & 0x3F) | code << 6
            extra.append(bytes(data))
    t = frames[-1].timestamp
    for i, data in enumerate(extra):
        frames.insert(
            rng.randrange(len(frames)),
            can.Message(
                timestamp=round(t + (i + 1) * STEP, 3),
                arbitration_id=motor_2.frame_id,
                data=data,
                channel="can0",
            ),
        )
    frames.sort(key=lambda m: m.timestamp)
    check(loaded, frames=frames)


def test_29_bit_ids_below_0x800_are_decoded() -> None:
    """motohawk_fd.dbc's ExampleMessage is 0x1F0, extended: its frames decode (they were all
    counted ``unknown_id``), and a standard frame 0x1F0 is a different, unknown, message."""
    require_corpus()
    loaded = load(CORPUS / "dbc_corpus" / "cantools_tests" / "dbc" / "motohawk_fd.dbc")
    message = loaded.db.get_message_by_name("ExampleMessage")
    assert message.frame_id == 0x1F0 and message.is_extended_frame
    frames = [
        can.Message(
            timestamp=1.0 + i * STEP,
            arbitration_id=0x1F0,
            is_extended_id=extended,
            data=bytes([i, 0xFF - i, 0, 0, 0, 0, 0, 0]),
            channel="can0",
        )
        for i in range(20)
        for extended in (True, False)
    ]
    rows, stats = run(loaded, frames, "every", j1939=False)
    assert stats.decode.decoded == 20 and stats.decode.skipped == {"unknown_id": 20}
    assert {key[0] for key in rows} == {"ExampleMessage"}
    check(loaded, frames=frames)
