"""What VSS names cost (docs/vss.md): checking mappings at start, and decoding payloads whose
series feed VSS paths.

    .venv/bin/python benchmarks/vss.py

Prints markdown. Start-up: ``link_config`` of each bundled mapping (tree, file, checks), cold
(first in the process) and warm (cached tree and file, what a twin update costs). Decode: the demo
car's simulated traffic (60 s, every signal, ``PayloadReader``) with the demo mapping, rows per
second with VSS rows and with ``vss=False``; best of 5.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config.model import parse_config
from edge.processing.database import load_databases
from edge.processing.processor import Processor
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from edge.vss.mapping import link_config
from edge.wire.codec import PayloadReader

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "dbc_corpus" / "opendbc"


def startup() -> None:
    print("| mapping | links | cold ms | warm ms |\n|---|---:|---:|---:|")
    cases = [("demo_vehicle.json", DEMO_DBC)]
    if CORPUS.is_dir():
        cases += [("vw_mqb.json", CORPUS / "vw_mqb.dbc"), ("vw_pq.json", CORPUS / "vw_pq.dbc")]
    for mapping, dbc in cases:
        config = parse_config(
            {"buses": [{"name": "can0", "dbc": [str(dbc)], "strict": False,
                        "vss_mapping": [mapping]}]}
        )  # fmt: skip
        databases = [load_databases([str(dbc)], strict=False)]
        t0 = time.perf_counter()
        vss = link_config(config, databases)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        link_config(config, databases)
        warm = time.perf_counter() - t0
        print(f"| {mapping} | {len(vss.links)} | {cold * 1e3:.1f} | {warm * 1e3:.1f} |")


def payloads() -> list[bytes]:
    config = parse_config(
        {"buses": [{"name": "can0", "dbc": [str(DEMO_DBC)], "vss_mapping": ["demo_vehicle.json"]}]}
    )
    bodies: list[bytes] = []

    def append(build: Any) -> int:
        bodies.append(build("7e57" * 8, len(bodies)).body)
        return len(bodies) - 1

    processor = Processor(config, append)
    frames = list(VehicleSimulator(seed=1, start_time=1.7e9, channel="can0").frames(60.0))
    for i in range(0, len(frames), 256):
        processor.process(frames[i : i + 256])
    processor.flush()
    return bodies


def decode_rate() -> None:
    bodies = payloads()
    print("\n| decoder | rows | rows/s |\n|---|---:|---:|")
    for label, vss in (("with VSS rows", True), ("vss=False", False)):
        best, rows = float("inf"), 0
        for _ in range(5):
            decoder = PayloadReader(vss=vss)
            t0 = time.perf_counter()
            rows = sum(len(decoder.rows(b)) for b in bodies)
            best = min(best, time.perf_counter() - t0)
        print(f"| {label} | {rows:,} | {rows / best:,.0f} |")


if __name__ == "__main__":
    startup()
    decode_rate()
