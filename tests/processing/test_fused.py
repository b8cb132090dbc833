"""The optimised paths give exactly what the plain ones give (issue 6). Not timed: benchmarks/
measures speed; these prove each shortcut changes nothing.

- Raw decoding straight from cantools' compiled layouts (``tuple_decoder``/``dict_decoder``)
  equals ``message.decode(data, False, False)`` on every message of every loadable corpus
  database, multiplexed, big-endian, signed and float signals included.
- The Processor's hot loop (deferred sampling, settled a column at a time; a bus's tables kept
  across a run of its frames; frames looked up by
  ID in separate 11-bit and 29-bit tables, unknown IDs counted apart) gives the same rows and
  counters as the plain steps (``_process_one`` for every frame) on every corpus log, with
  default and other sampling settings, and on synthetic frames that give one number as both an
  11-bit and a 29-bit ID.
- The tighter size bounds the hot loop reserves are true upper bounds of the encoded values.
- The database cache returns an equal database, survives a damaged cache, and the hot-loop
  comparisons run the plain steps on databases read back from it.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import can
import cantools
import msgpack
import pytest
from cantools.database.can import Database, Message
from cantools.database.errors import DecodeError

from edge.config.model import parse_config
from edge.processing.batch import Batch, value_bound
from edge.processing.database import load_database
from edge.processing.decode import dict_decoder, tuple_decoder
from edge.processing.processor import Processor
from edge.simulator.vehicle import DEMO_DBC
from tests.processing.test_processor import Collector, frames_of
from tests.support.corpus import CORPUS, LOGS, CorpusLog, require_corpus

DBC_CORPUS = CORPUS / "dbc_corpus"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every database goes through a cache of the test's own: the Processor of ``both`` parses
    its databases, the PlainProcessor reads them back from the cache."""
    import edge.processing.database

    monkeypatch.setenv("CAN_TELEMETRY_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setattr(edge.processing.database, "CACHE_MIN_SECONDS", 0.0)


FORMATS = {".dbc", ".arxml", ".kcd", ".sym"}
PAYLOADS_PER_MESSAGE = 40


# --- raw decoding ---------------------------------------------------------------------------


def _database_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    folders = [DBC_CORPUS / "cantools_tests", DBC_CORPUS / "other"]
    files = [p for f in folders for p in f.rglob("*") if p.suffix.lower() in FORMATS]
    files += [CORPUS / b.dbc for log in LOGS for b in log.buses]
    files += [DBC_CORPUS / "opendbc" / f"vw_{name}.dbc" for name in ("mqb", "mlb", "pq")]
    return sorted(set(files))


@functools.cache
def _load(path: Path) -> Database | None:
    for strict in (True, False):
        try:
            db = cantools.database.load_file(str(path), strict=strict)
        except Exception:
            continue
        return db if isinstance(db, Database) else None
    return None


DATABASES = _database_files()
DATABASE_PARAMS = [pytest.param(p, id=p.relative_to(CORPUS).as_posix()) for p in DATABASES] or [
    pytest.param(None, id="absent", marks=pytest.mark.skip(reason=f"{CORPUS} is absent"))
]


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    return bool(a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


def raw_value(signal: Any, rng: random.Random) -> int | float:
    if signal.is_float:
        return rng.uniform(-1e6, 1e6)
    if signal.is_signed:
        return rng.randrange(-(2 ** (signal.length - 1)), 2 ** (signal.length - 1))
    return rng.randrange(2**signal.length)


def branches(tree: Sequence[Any], cap: int = 300) -> list[dict[str, int]]:
    """Multiplexer assignments that select each branch of a signal tree (at most ``cap``)."""
    out: list[dict[str, int]] = [{}]
    for node in tree:
        if isinstance(node, dict):
            ((name, children),) = node.items()
            out = [
                {**assignment, name: value, **below}
                for value, subtree in children.items()
                for below in branches(subtree, cap)
                for assignment in out
            ][:cap]
    return out


def payloads(message: Message, rng: random.Random) -> Iterator[bytes]:
    """Zeros, ones, random bytes, and for a multiplexed message a payload of every branch."""
    length = message.length
    yield bytes(length)
    yield b"\xff" * length
    for _ in range(PAYLOADS_PER_MESSAGE):
        yield rng.randbytes(length)
    if message.is_multiplexed():
        for assignment in branches(message.signal_tree):
            values = {s.name: raw_value(s, rng) for s in message.signals}
            values.update(assignment)
            try:
                yield bytes(message.encode(values, scaling=False, strict=False))
            except Exception:  # a branch cantools cannot encode (e.g. float limits)
                continue


def expect(message: Message, data: bytes) -> dict[str, Any] | None:
    try:
        values = message.decode(data, False, False)
    except DecodeError:
        return None
    assert isinstance(values, dict)
    return values


@pytest.mark.parametrize("path", DATABASE_PARAMS)
def test_fast_decoding_equals_cantools(path: Path) -> None:
    """For every message, the tuple decoder (when it takes the message) and the dict decoder
    give what cantools gives, value for value and type for type, and fail where it fails."""
    db = _load(path)
    if db is None:
        pytest.skip("cantools does not load it")
    rng = random.Random(path.name)
    for message in db.messages:
        if message.length == 0:
            continue
        fast_tuple = tuple_decoder(message)
        fast_dict = dict_decoder(message)
        if fast_tuple is not None:
            assert not message.is_multiplexed()
        for data in payloads(message, rng):
            wanted = expect(message, data)
            if wanted is None:
                with pytest.raises(DecodeError):
                    fast_dict(data)
                assert fast_tuple is None  # a message it takes decodes every payload
                continue
            got = fast_dict(bytearray(data))  # frames carry bytearrays
            assert got.keys() == wanted.keys(), message.name
            assert all(same(got[k], wanted[k]) for k in wanted), message.name
            if fast_tuple is not None:
                raw = fast_tuple.decode(bytearray(data))
                direct = bytearray(data[::-1] if fast_tuple.reverse else data)
                assert all(map(same, fast_tuple.unpack(direct), raw))
                values = dict(zip(fast_tuple.names, raw, strict=True))
                assert values.keys() == wanted.keys(), message.name
                assert all(same(values[k], wanted[k]) for k in wanted), message.name


def test_the_fast_path_covers_the_plain_messages_of_the_corpus() -> None:
    """The tuple decoder is not silently refused: it takes nearly every plain message (the rest
    are cantools quirks it declines, e.g. overlapping signals cantools cannot unpack)."""
    require_corpus()
    plain = taken = 0
    kinds: set[str] = set()
    for path in DATABASES:
        db = _load(path)
        for message in db.messages if db is not None else ():
            if message.is_multiplexed() or message.is_container or not message.signals:
                continue
            plain += 1
            if tuple_decoder(message) is not None:
                taken += 1
                for s in message.signals:
                    kinds.add(f"{s.byte_order}-{'float' if s.is_float else s.is_signed}")
    assert plain > 1000
    assert taken / plain > 0.98
    assert {"big_endian-True", "little_endian-True", "little_endian-float"} <= kinds


# --- the hot loop against the plain steps ------------------------------------------------------

Key = tuple[str, str, Any, str]


class PlainProcessor(Processor):
    """Every frame through the plain steps: decode, sample, add (no inlined hot loop)."""

    def _run(self, frames: Any) -> None:
        for msg in frames:
            self._process_one(msg)


def counters(processor: Processor) -> tuple[Any, ...]:
    stats = processor.stats()
    return (stats.frames, stats.decode, stats.samples, stats.rows)


Outcome = tuple[dict[Key, list[tuple[float, Any, Any]]], tuple[Any, ...]]


def fused_and_plain(
    config: dict[str, Any], frames: Sequence[can.Message], chunk: int = 256
) -> tuple[Outcome, Outcome]:
    """The rows and counters of the hot loop, then of the plain steps, fed ``frames`` in
    chunks."""
    results = []
    for cls in (Processor, PlainProcessor):
        collector = Collector()
        processor = cls(parse_config(config), collector)
        for i in range(0, len(frames), chunk):
            processor.process(frames[i : i + chunk])
        processor.flush()
        results.append((collector.rows(), counters(processor)))
    return results[0], results[1]


def both(config: dict[str, Any], frames: list[can.Message], chunk: int = 256) -> None:
    """The hot loop and the plain steps give the same rows and counters, fed in chunks."""
    (fast_rows, fast_counters), (plain_rows, plain_counters) = fused_and_plain(
        config, frames, chunk
    )
    assert fast_rows, "nothing decoded: the test proves nothing"
    assert fast_counters == plain_counters
    assert fast_rows.keys() == plain_rows.keys()
    for key in plain_rows:
        assert fast_rows[key] == plain_rows[key], key


SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "heartbeats": {"signals": {"heartbeat": 0.5}},
    "every": {"signals": {"mode": "every", "heartbeat": 0}},
    "small-batches": {"batch": {"max_bytes": 4096, "max_age": 1.0}},
    "some-signals": {
        "signals": {"exclude": ["*Counter*", "*CHECKSUM*", "*Checksum*", "*_CRC*", "*.A*"]}
    },
    "rate-limited": {
        "signals": {"rules": [{"match": ["*"], "mode": "min_interval", "interval": 0.05}]}
    },
}


@pytest.mark.parametrize("setting", SETTINGS, ids=list(SETTINGS))
@pytest.mark.parametrize("log", LOGS, ids=[log.id for log in LOGS])
def test_hot_loop_equals_plain_steps(log: CorpusLog, setting: str) -> None:
    require_corpus()
    frames = frames_of(log, None, 15_000 if setting != "default" else None)
    both(log.config(**SETTINGS[setting]), frames)


def test_j1939_priorities_sharing_a_group_keep_frame_order(tmp_path: Path) -> None:
    """Two priorities of one PGN from one source address feed one batch group: their rows must
    interleave in frame order, so neither track defers (checked against the plain steps)."""
    db = load_database(DEMO_DBC, cache=False)
    eec1 = next(m for m in db.messages if m.is_extended_frame and m.length == 8)
    rng = random.Random(7)
    frames = []
    for i in range(2_000):
        priority = rng.choice((3, 6))
        frame_id = (eec1.frame_id & ~(0x7 << 26)) | priority << 26
        frames.append(
            can.Message(
                timestamp=1_700_000_000 + i * 0.01,
                arbitration_id=frame_id,
                is_extended_id=True,
                data=rng.randbytes(8),
                channel="can0",
            )
        )
    config = {
        "vehicle_id": "v",
        "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)], "j1939": True}],
    }
    both(config, frames, chunk=100)


def test_standard_and_extended_ids_of_one_number_stay_apart() -> None:
    """The hot loop looks frames up in two tables by the ID itself (11-bit, 29-bit) and counts
    unknown IDs apart from other skips: the same number as a standard and as an extended ID,
    error, remote and unmapped-bus frames are decoded and counted as the plain steps do."""
    db = load_database(DEMO_DBC, cache=False)
    standard = db.get_message_by_name("ECM_EngineStatus")  # 11-bit 160
    eec1 = db.get_message_by_name("EEC1")  # 29-bit
    low = eec1.frame_id & 0x7FF
    kinds = [
        ("known", standard.frame_id, False, "can0"),
        ("unknown", standard.frame_id, True, "can0"),  # 160 as a 29-bit ID: not in the DBC
        ("known", eec1.frame_id, True, "can0"),
        ("unknown", low, False, "can0"),  # EEC1's low 11 bits as a standard ID
        ("unknown", 0x123, False, "can0"),
        ("unknown", 0x1ABCDE, True, "can0"),
        ("error", standard.frame_id, False, "can0"),
        ("remote", standard.frame_id, False, "can0"),
        ("bus", standard.frame_id, False, "can9"),
    ]
    rng = random.Random(11)
    frames = []
    expected: dict[str, int] = defaultdict(int)
    for i in range(3_000):
        kind, frame_id, extended, channel = rng.choice(kinds)
        expected[kind] += 1
        frames.append(
            can.Message(
                timestamp=1_700_000_000 + i * 0.001,
                arbitration_id=frame_id,
                is_extended_id=extended,
                is_error_frame=kind == "error",
                is_remote_frame=kind == "remote",
                data=b"" if kind == "remote" else bytes([rng.randrange(4)] * 8),
                channel=channel,
            )
        )
    config = {"vehicle_id": "v", "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}]}
    both(config, frames, chunk=97)
    processor = Processor(parse_config(config), Collector())
    processor.process(frames)
    skipped = processor.stats().decode.skipped
    assert skipped["unknown_id"] == expected["unknown"]
    assert skipped["error_frame"] == expected["error"]
    assert skipped["remote_frame"] == expected["remote"]
    assert skipped["unknown_bus"] == expected["bus"]
    assert processor.stats().frames == len(frames)


# --- the size bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(1, 65))
@pytest.mark.parametrize("signed", [False, True])
def test_value_bound_covers_every_delta_of_a_signal(length: int, signed: bool) -> None:
    low, high = (-(2 ** (length - 1)), 2 ** (length - 1) - 1) if signed else (0, 2**length - 1)
    deltas = {high - low, low - high, high, low, 0, 1, -1}
    row_delta = len(msgpack.packb(2**32 - 1))
    for delta in deltas:
        if -(2**63) <= delta < 2**64:  # beyond that the codec sends plain values
            assert row_delta + len(msgpack.packb(delta)) <= value_bound(length, False)
        for value in (low, high):
            assert row_delta + len(msgpack.packb(value)) <= value_bound(length, False)
    assert row_delta + len(msgpack.packb(-1.5e300)) <= value_bound(length, True)


class Recorder(Processor):
    """Records each written batch's estimate and its uncompressed body size."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sizes: list[tuple[int, int]] = []

    def _write(self, batch: Batch) -> None:
        self.sizes.append((batch.estimate, len(self.codec.data_body(batch, self.schema))))
        super()._write(batch)


@pytest.mark.parametrize("log", LOGS, ids=[log.id for log in LOGS])
def test_the_estimate_stays_an_upper_bound_of_the_body(log: CorpusLog) -> None:
    require_corpus()
    recorder = Recorder(parse_config(log.config(batch={"compression": "none"})), Collector())
    recorder.process(frames_of(log, None, None))
    recorder.flush()
    assert recorder.sizes
    for estimate, size in recorder.sizes:
        assert size <= estimate


# --- the database cache ------------------------------------------------------------------------

VW_MQB = DBC_CORPUS / "opendbc" / "vw_mqb.dbc"


def describe(db: Database) -> list[Any]:
    """Everything decoding and the schema depend on."""
    out: list[Any] = []
    for m in db.messages:
        out.append((m.name, m.frame_id, m.is_extended_frame, m.length, m.is_fd, m.senders))
        for s in m.signals:
            choices = {int(k): str(v) for k, v in (s.choices or {}).items()}
            out.append(
                (
                    s.name,
                    s.start,
                    s.length,
                    s.byte_order,
                    s.is_signed,
                    s.is_float,
                    s.scale,
                    s.offset,
                    s.minimum,
                    s.maximum,
                    s.unit,
                    choices,
                    s.is_multiplexer,
                    s.multiplexer_ids,
                    s.multiplexer_signal,
                )
            )
    return out


def cache_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".pickle")


def test_cached_database_equals_the_parsed_one(tmp_path: Path) -> None:
    require_corpus()
    cache = tmp_path / "cache"
    parsed = load_database(VW_MQB, strict=False, cache=False)
    first = load_database(VW_MQB, strict=False, cache=cache)
    (entry,) = cache_entries(cache)
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)
    second = load_database(VW_MQB, strict=False, cache=cache)
    assert second is not first  # read back from the cache
    assert describe(second) == describe(parsed) == describe(first)
    rng = random.Random(1)
    for message in parsed.messages:
        cached = second.get_message_by_name(message.name)
        for _ in range(5):
            data = rng.randbytes(message.length)
            assert expect(cached, data) == expect(message, data)
    assert entry.exists()


@pytest.mark.parametrize(
    "damage",
    [b"", b"not a pickle", b"\x80\x05truncated", pickle.dumps({"a": "dict"})],
    ids=["empty", "garbage", "truncated", "not-a-database"],
)
def test_a_damaged_cache_entry_is_ignored_and_rebuilt(tmp_path: Path, damage: bytes) -> None:
    require_corpus()
    cache = tmp_path / "cache"
    expected = describe(load_database(VW_MQB, strict=False, cache=cache))
    (entry,) = cache_entries(cache)
    entry.write_bytes(damage)
    assert describe(load_database(VW_MQB, strict=False, cache=cache)) == expected
    (rebuilt,) = cache_entries(cache)
    database, repairs = pickle.loads(rebuilt.read_bytes())  # cache format 2: with the repairs
    assert isinstance(database, Database) and repairs == ()


def test_cache_keys_follow_content_and_strictness(tmp_path: Path) -> None:
    require_corpus()
    cache = tmp_path / "cache"
    copy = tmp_path / "vw.dbc"
    copy.write_bytes(VW_MQB.read_bytes())
    load_database(copy, strict=False, cache=cache)
    load_database(VW_MQB, strict=False, cache=cache)  # same bytes: same entry
    assert len(cache_entries(cache)) == 1
    copy.write_bytes(VW_MQB.read_bytes().replace(b"BO_ ", b"BO_  ", 1))
    edited = load_database(copy, strict=False, cache=cache)
    assert len(cache_entries(cache)) == 2
    assert describe(edited) == describe(load_database(VW_MQB, strict=False, cache=False))


def test_strict_errors_are_not_hidden_by_a_relaxed_cache_entry(tmp_path: Path) -> None:
    require_corpus()
    cache = tmp_path / "cache"
    load_database(VW_MQB, strict=False, cache=cache)
    with pytest.raises(Exception, match="overlapping"):
        load_database(VW_MQB, strict=True, cache=cache)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_cache_others_can_write_to_is_not_read(tmp_path: Path) -> None:
    require_corpus()
    cache = tmp_path / "cache"
    load_database(VW_MQB, strict=False, cache=cache)
    (entry,) = cache_entries(cache)
    entry.write_bytes(pickle.dumps(load_database(DEMO_DBC, cache=False)))  # a planted entry
    cache.chmod(0o777)
    db = load_database(VW_MQB, strict=False, cache=cache)
    assert describe(db) == describe(load_database(VW_MQB, strict=False, cache=False))


def test_the_cache_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_corpus()
    monkeypatch.setenv("CAN_TELEMETRY_CACHE_DIR", "")
    load_database(VW_MQB, strict=False)
    monkeypatch.setenv("CAN_TELEMETRY_CACHE_DIR", str(tmp_path / "env"))
    load_database(VW_MQB, strict=False)
    assert len(cache_entries(tmp_path / "env")) == 1


def test_the_cache_keeps_the_most_recently_used_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_corpus()
    import edge.processing.database

    monkeypatch.setattr(edge.processing.database, "CACHE_MAX_ENTRIES", 2)
    cache = tmp_path / "cache"
    files = []
    for i in range(3):  # three versions of one file: three entries
        copy = tmp_path / f"vw{i}.dbc"
        copy.write_bytes(VW_MQB.read_bytes() + f'\nCM_ "version {i}";\n'.encode())
        files.append(copy)
    load_database(files[0], strict=False, cache=cache)
    load_database(files[1], strict=False, cache=cache)
    for entry in cache_entries(cache):
        os.utime(entry, (1, 1))  # both long unused...
    load_database(files[0], strict=False, cache=cache)  # ...until a hit refreshes the first
    (used,) = [e for e in cache_entries(cache) if e.stat().st_mtime > 1]
    load_database(files[2], strict=False, cache=cache)
    kept = cache_entries(cache)
    assert len(kept) == 2
    assert used in kept
