"""Benchmark of campaigns (issue 11): what conditions and pre-trigger history cost. Prints markdown.

    .venv/bin/python benchmarks/campaigns.py [--quick]
    .venv/bin/python benchmarks/campaigns.py --instructions   # 1. as instructions, deterministic

Needs the shared corpus beside the checkout (``../shared/corpus``); without it, it says so and
exits 0.

1. Throughput: every corpus log, frames in memory, through the ``Processor`` (payloads built
   and kept in memory), with and without 10 condition campaigns. The campaigns are made from the
   log itself: the 10 busiest messages its DBC knows (by PGN on a J1939 bus), each with a
   condition on one of its numeric signals that is not a counter or checksum
   (``Message.Signal > its 99th percentile``: an event, which does fire), ``before = 5``,
   ``after = 2``, ``min_interval = 30`` and the message's signals captured at full rate. Best
   of N, alternating; the figure is the ratio of frame rates (target >= 0.8). Each capture
   re-decodes and encodes every frame of its window: campaigns that fire all the time cost in
   proportion (see the ``captured`` column).
   With ``--instructions`` the same runs are counted in instructions, and twice: over every
   frame of the log, and over its known frames only (what reaches the module on SocketCAN,
   whose kernel filters keep other IDs out of the process). The gateway's figure adds what the
   module's SocketCAN reader costs per frame to both sides: its ``DropCountingReceiver.recv``
   on a UDP socket carrying ``struct can_frame`` datagrams (the module's code, whole, with the
   kernel's CAN stack left out: callgrind counts only user space, so the system calls are not
   counted and the reader is undercounted, which lowers the gateway's ratio).
2. Peak memory: a fresh child process (VmHWM) runs 90 s of synthetic traffic on every message of
   ``vw_mqb.dbc`` (benchmarks/run.py's ``vw_traffic``) with one campaign capturing every signal
   with a 60 s pre-trigger window (``before = 60``), against the same run without it (target:
   within the 64 MB budget).
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as base  # benchmarks/run.py: corpus frames, traffic, peak RSS

TARGET_RATIO = 0.8
TARGET_RSS_MB = 64.0
CAMPAIGNS = 10
VW_DBC = "vw_mqb.dbc"
VW_SECONDS = 90.0


def collector() -> Any:
    """The spool's ``append`` contract in memory (payloads built, sizes kept)."""
    sizes: list[int] = []

    def append(build: Any, priority: int = 5) -> int:
        sizes.append(len(build("ab" * 16, len(sizes)).body))
        return len(sizes)

    return append


def log_campaigns(log: Any, frames: list[Any]) -> list[dict[str, Any]]:
    """10 condition campaigns on the log's busiest known messages (see the module docstring)."""
    import cantools

    counts: Counter[tuple[str, int, bool]] = Counter(
        (m.channel, m.arbitration_id, m.is_extended_id) for m in frames if not m.is_error_frame
    )
    dbs = {
        b.name: cantools.database.load_file(str(base.CORPUS / b.dbc), strict=b.strict)
        for b in log.buses
    }
    j1939 = {b.name: b.j1939 for b in log.buses}
    taken: list[dict[str, Any]] = []
    names: set[str] = set()
    for (bus, frame_id, extended), _ in counts.most_common():
        db = dbs.get(bus)
        if db is None or len(taken) == CAMPAIGNS:
            continue
        message = by_id(db, frame_id, extended, j1939[bus])
        if message is None:
            continue
        if bool(message.is_extended_frame) != extended or message.name in names:
            continue
        if sum(1 for b in dbs.values() if message.name in {m.name for m in b.messages}) > 1:
            continue  # on several buses: not a unique name for a condition
        values: dict[str, list[float]] = {}
        sample = [m for m in frames if m.channel == bus and m.arbitration_id == frame_id][:2000]
        for m in sample:
            try:
                decoded = message.decode(bytes(m.data), decode_choices=False)
            except Exception:
                continue
            for name, value in decoded.items():
                if isinstance(value, int | float):
                    values.setdefault(name, []).append(float(value))
        moving = [
            n
            for n, v in values.items()
            if len(set(v)) > 2 and not any(fnmatch.fnmatchcase(n, p) for p in base.NOISE)
        ]
        if not moving:
            continue
        signal = moving[0]
        threshold = statistics.quantiles(values[signal], n=100)[98]
        names.add(message.name)
        taken.append(
            {
                "name": f"c{len(taken)}",
                "condition": f"{message.name}.{signal} > {threshold!r}",
                "signals": [f"{message.name}.*"],
                "before": 5.0,
                "after": 2.0,
                "min_interval": 30.0,
            }
        )
    return taken


def by_id(db: Any, frame_id: int, extended: bool, j1939: bool) -> Any:
    """The message of a frame ID as decoding finds it: by ID, then on J1939 buses by PGN."""
    from edge.processing.decode import pgn_from_frame_id

    try:
        return db.get_message_by_frame_id(frame_id)
    except KeyError:
        pass
    if extended and j1939:
        pgn = pgn_from_frame_id(frame_id)
        for message in db.messages:
            if message.is_extended_frame and pgn_from_frame_id(message.frame_id) == pgn:
                return message
    return None


def throughput(log: Any, frames: list[Any], campaigns: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds to process ``frames`` (chunks of benchmarks/run.py's CHUNK), and the rows the
    captures held."""
    from edge.campaigns.engine import CampaignEngine
    from edge.config.model import parse_config
    from edge.processing.processor import Processor

    processor = Processor(
        parse_config(log.config(campaigns=campaigns)), collector(), campaigns=CampaignEngine
    )
    gc.collect()
    started = time.perf_counter()
    for i in range(0, len(frames), base.CHUNK):
        processor.process(frames[i : i + base.CHUNK])
    processor.flush()
    rows = 0
    if processor.campaigns is not None:
        processor.campaigns.flush()
        rows = sum(c["rows"] for c in processor.campaigns.counters().values())
    return time.perf_counter() - started, rows


def child_memory(with_campaign: str) -> dict[str, Any]:
    """``vw_mqb.dbc``, every signal, VW_SECONDS of traffic; with a 60 s pre-trigger campaign on
    every signal when ``with_campaign`` is ``yes``."""
    from edge.campaigns.engine import CampaignEngine
    from edge.config.model import parse_config
    from edge.delivery.spool import Spool
    from edge.processing.processor import Processor

    with tempfile.TemporaryDirectory() as tmp:
        data = base.vw_config(base.CORPUS / "dbc_corpus" / "opendbc" / VW_DBC, Path(tmp) / "s")
        if with_campaign == "yes":
            data["campaigns"] = [
                {
                    "name": "everything",
                    # fires once a minute or so (a byte that is random in the traffic)
                    "condition": "changed(ESP_21.ESP_v_Signal)",
                    "trigger": "while_true",
                    "min_interval": 60.0,
                    "signals": ["*"],
                    "before": 60.0,
                    "after": 1.0,
                }
            ]
        config = parse_config(data)
        spool = Spool(config.spool.path, max_bytes=200_000_000)
        processor = Processor(
            config,
            lambda b, priority=5: spool.append(b, priority=priority),
            campaigns=CampaignEngine,
        )
        db = processor.bus_decoders[0]._db
        base.feed(processor, base.vw_traffic(db, VW_SECONDS))
        engine = processor.campaigns
        history = engine.ring_stats() if engine is not None else {}
        captures = engine.counters()["everything"]["captures"] if engine is not None else 0
        if engine is not None:
            engine.flush()
        spool.close()
    return {
        "rss_mb": base.peak_rss_mb(),
        "history": history,
        "captures": captures,
        "frames": processor.stats().frames,
    }


def memory_child(with_campaign: str) -> dict[str, Any]:
    """:func:`child_memory` in a fresh process (its VmHWM is its own)."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "memory", with_campaign],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def child_instructions(log_id: str, with_campaigns: str, which: str) -> dict[str, Any]:
    """Processes one log (``which``: ``all`` its frames or its ``known`` ones) under callgrind,
    with instrumentation on only while frames are processed (benchmarks/run.py's
    ``instrumented``). The campaigns are made from all its frames either way."""
    from edge.campaigns.engine import CampaignEngine
    from edge.config.model import parse_config
    from edge.processing.processor import Processor
    from tests.support.corpus import LOGS

    log = next(log for log in LOGS if log.id == log_id)
    every = base.corpus_frames(log)
    campaigns = log_campaigns(log, every) if with_campaigns == "yes" else []
    frames = every if which == "all" else base.known_frames(log, every).messages
    processor = Processor(
        parse_config(log.config(campaigns=campaigns)), collector(), campaigns=CampaignEngine
    )
    gc.collect()
    with base.instrumented():
        for i in range(0, len(frames), base.CHUNK):
            processor.process(frames[i : i + base.CHUNK])
        processor.flush()
        if processor.campaigns is not None:
            processor.campaigns.flush()
    return {"frames": len(frames)}


def instructions(log_id: str, with_campaigns: str, which: str) -> int:
    """Instructions executed processing ``log_id`` (see benchmarks/run.py's
    ``count_instructions``)."""
    script = Path(__file__).resolve()
    return base.count_instructions(script, "instructions", log_id, with_campaigns, which)


#: Frames the reader's measurement sends per round: fewer than a default receive buffer holds.
READ_ROUND = 200
READ_ROUNDS = 50


def child_read(kind: str) -> dict[str, Any]:
    """The module's SocketCAN reader (``DropCountingReceiver.recv(0)``, as ``BusSource`` calls
    it) on a UDP socket carrying 16-byte ``struct can_frame`` datagrams, counted while it reads
    :data:`READ_ROUNDS` rounds of :data:`READ_ROUND` queued frames; ``kind`` ``empty``: the
    rounds without frames, for what switching the count on and off costs."""
    import socket
    import struct

    from edge.ingest.socketcan import DropCountingReceiver

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    frame = struct.pack("=IBBBB8s", 0x98FEF100, 8, 0, 0, 0, bytes(range(8)))  # EFF: J1939 EEC1
    reader = DropCountingReceiver(receiver)
    read = 0
    for _ in range(READ_ROUNDS):
        if kind == "frames":
            for _ in range(READ_ROUND):
                sender.sendto(frame, receiver.getsockname())
        with base.instrumented():
            while kind == "frames" and reader.recv(0) is not None:
                read += 1
    receiver.close()
    sender.close()
    if kind == "frames" and read != READ_ROUND * READ_ROUNDS:
        raise RuntimeError(f"read {read} of {READ_ROUND * READ_ROUNDS} frames")
    return {"frames": read}


def read_instructions() -> float:
    """User-space instructions per frame of the module's SocketCAN reader (:func:`child_read`;
    the empty rounds' count, measured apart, taken off)."""
    script = Path(__file__).resolve()
    frames = base.count_instructions(script, "read", "frames")
    empty = base.count_instructions(script, "read", "empty")
    return (frames - empty) / (READ_ROUND * READ_ROUNDS)


def instruction_report(logs: list[Any]) -> None:
    """``--instructions``: per log, the processing stage's instructions without and with the
    campaigns, over all frames and over the known ones, and the gateway's ratio (see the module
    docstring). Prints markdown."""
    read = read_instructions()
    print("## Campaigns: instructions with 10 condition campaigns (callgrind)\n")
    print(f"The module's SocketCAN reader: {read:,.0f} instructions a frame (user space).\n")
    print(
        "| log | frames | without | with campaigns | processing: ratio | gateway: ratio "
        "| known frames | without | with campaigns | processing: ratio | gateway: ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    columns: dict[str, list[float]] = {"all": [], "all+read": [], "known": [], "known+read": []}
    for log in logs:
        every = base.corpus_frames(log)
        cells = [log.id]
        for which, count in (("all", len(every)), ("known", len(base.known_frames(log, every)))):
            plain = instructions(log.id, "no", which)
            loaded = instructions(log.id, "yes", which)
            reading = read * count
            columns[which].append(plain / loaded)
            columns[f"{which}+read"].append((plain + reading) / (loaded + reading))
            cells += [f"{count:,}", f"{plain:,}", f"{loaded:,}"]
            cells += [f"{columns[which][-1]:.3f}", f"{columns[which + '+read'][-1]:.3f}"]
        print(f"| {' | '.join(cells)} |")
    means = {name: base.geomean(values) for name, values in columns.items()}
    print(
        f"| geometric mean | | | | {means['all']:.2f} | {means['all+read']:.2f} "
        f"| | | | {means['known']:.2f} | {means['known+read']:.2f} |"
    )
    for name, label in (("all", "The processing stage"), ("known+read", "The gateway")):
        verdict = "meets" if means[name] >= TARGET_RATIO else "misses"
        print(f"\n{label}: {means[name]:.2f} ({verdict} {TARGET_RATIO}).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, fewer frames")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="throughput as instructions executed (valgrind's callgrind; minutes per log)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.child[0] == "instructions":
        print(json.dumps(child_instructions(*args.child[1:4])))
        return 0
    if args.child and args.child[0] == "read":
        print(json.dumps(child_read(args.child[1])))
        return 0
    if args.child:
        print(json.dumps(child_memory(args.child[1])))
        return 0
    if not base.CORPUS.is_dir():
        print(f"corpus not found at {base.CORPUS}: nothing to measure")
        return 0
    from tests.support.corpus import LOGS

    if args.instructions:
        instruction_report(LOGS)
        return 0

    repeats = 1 if args.quick else 3
    print("## Campaigns: throughput with 10 condition campaigns\n")
    print("| log | frames | without | with campaigns | ratio | campaigns | captured rows |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for log in LOGS:
        frames = base.corpus_frames(log)
        if args.quick:
            frames = frames[:100_000]
        campaigns = log_campaigns(log, frames)
        without, with_ = [], []
        rows = 0
        for _ in range(repeats):
            without.append(throughput(log, frames, [])[0])
            seconds, rows = throughput(log, frames, campaigns)
            with_.append(seconds)
        ratio = min(without) / min(with_)
        ratios.append(ratio)
        print(
            f"| {log.id} | {len(frames):,} | {base.rate(len(frames) / min(without))} "
            f"| {base.rate(len(frames) / min(with_))} | {ratio:.2f} | {len(campaigns)} "
            f"| {rows:,} |"
        )
    overall = base.geomean(ratios)
    verdict = "meets" if overall >= TARGET_RATIO else "misses"
    print(f"\nGeometric mean ratio {overall:.2f} ({verdict} the target of {TARGET_RATIO}).\n")

    print(f"## Campaigns: peak memory, 60 s pre-trigger history on every signal of {VW_DBC}\n")
    plain = memory_child("no")
    loaded = memory_child("yes")
    history = loaded["history"]
    print("| run | peak RSS | frames | history kept | overflow |")
    print("|---|---:|---:|---:|---:|")
    print(f"| without campaigns | {plain['rss_mb']:.1f} MB | {plain['frames']:,} | - | - |")
    print(
        f"| 60 s before, every signal | {loaded['rss_mb']:.1f} MB | {loaded['frames']:,} "
        f"| {history['frames']:,} frames, {history['bytes'] / 1e6:.1f} MB | {history['overflow']} |"
    )
    verdict = "within" if loaded["rss_mb"] <= TARGET_RSS_MB else "over"
    print(f"\n{verdict} the {TARGET_RSS_MB:.0f} MB budget ({loaded['captures']} captures made).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
