"""Flash wear: bytes the spool makes the kernel write per hour of driving, against payload bytes.

Gateways store on eMMC or SD cards, whose cells take a limited number of writes; what wears them
is what the block layer is asked to write, which SQLite's journal, checkpoints and page rewrites
multiply. This benchmark makes the payloads of ``--minutes`` of simulated driving with the real
processor (the demo car, the default configuration: 5 s batches, zstd), then feeds them to a
real spool file on a real disk in two ways, reading ``write_bytes`` of ``/proc/self/io`` (bytes
this process sent to the block layer, what the device must program) around each:

* ``live``: the link is up: each payload is appended, read and acked at once (the usual case);
* ``outage``: the link is down for the whole drive, then the backlog is drained.

Every variant is durable in the same way (``synchronous=FULL``: a returned append survives a
power cut); ``--compare`` adds rows with SQLite's default 4 KiB pages, as the spool had before
it chose 1 KiB pages for new files. Prints a markdown table::

    .venv/bin/python benchmarks/wear.py [--minutes 20] [--dir /var/tmp] [--compare]

``--dir`` must be on a real block device (not tmpfs, whose writes the kernel does not count).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import edge.delivery.spool  # noqa: E402
from edge.config.model import parse_config  # noqa: E402
from edge.delivery.spool import Spool  # noqa: E402
from edge.processing.processor import Processor  # noqa: E402
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator  # noqa: E402
from edge.wire.payload import Payload  # noqa: E402

START_TIME = 1_700_000_000.0  # a fixed drive: the same payloads on every run
CHUNK_SECONDS = 10.0

Build = Callable[[str, int], Payload]


def written() -> int:
    """Bytes this process has caused to be written to storage (``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def drive(minutes: float) -> list[Build]:
    """The payload builders the processor hands the spool for ``minutes`` of driving."""
    config = parse_config({"buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}]})
    builds: list[Build] = []

    def append(build: Build) -> int:
        build("0" * 32, len(builds))  # the processor counts sizes in it; built again later
        builds.append(build)
        return len(builds) - 1

    processor = Processor(config, append)
    simulator = VehicleSimulator(seed=1, start_time=START_TIME, channel="can0")
    done = 0.0
    while done < minutes * 60:
        processor.process(list(simulator.frames(CHUNK_SECONDS)))
        done += CHUNK_SECONDS
    processor.flush()
    return builds


def feed(folder: Path, builds: list[Build], mode: str, page_size: int | None) -> tuple[int, int]:
    """Payload bytes and bytes written for one run of ``mode`` on a fresh spool file."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    default = edge.delivery.spool._PAGE_SIZE
    if page_size:  # a comparison row only: the spool's own settings otherwise
        edge.delivery.spool._PAGE_SIZE = page_size
    try:
        spool = Spool(folder / "spool.db")
    finally:
        edge.delivery.spool._PAGE_SIZE = default
    payload_bytes = 0
    os.sync()
    before = written()
    for build in builds:
        spool.append(build)
        if mode == "live":
            item = spool.oldest()
            assert item is not None
            payload_bytes += len(item.payload.body)
            spool.ack(item.seq, stream_id=item.stream_id)
    while mode == "outage" and (item := spool.oldest()) is not None:
        payload_bytes += len(item.payload.body)
        spool.ack(item.seq, stream_id=item.stream_id)
    spool.close()
    os.sync()  # what the page cache still holds is written too, and counted
    return payload_bytes, written() - before


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="minutes of driving")
    parser.add_argument("--dir", default=None, help="folder on the disk to measure")
    parser.add_argument("--compare", action="store_true", help="add rows with 4 KiB pages")
    args = parser.parse_args(argv)
    builds = drive(args.minutes)
    variants: list[tuple[str, int | None]] = [("spool as configured", None)]
    if args.compare:
        variants.append(("4 KiB pages (SQLite's default)", 4096))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="wear-") as tmp:
        fs = os.statvfs(tmp)
        if fs.f_blocks and Path("/proc/mounts").exists():
            mounts = Path("/proc/mounts").read_text()
            if any(
                line.split()[2] == "tmpfs" and str(Path(tmp)).startswith(line.split()[1] + "/")
                for line in mounts.splitlines()
                if line.split()[1] != "/"
            ):
                print(f"warning: {tmp} is on tmpfs: the kernel counts no writes there")
        per_hour = 60.0 / args.minutes
        print(f"{len(builds)} payloads from {args.minutes:g} min of driving; folder {tmp}\n")
        print("| variant | mode | payload bytes/h | written/h | write amplification |")
        print("|---|---|---|---|---|")
        for name, page_size in variants:
            for mode in ("live", "outage"):
                payload, wrote = feed(Path(tmp) / "spool", builds, mode, page_size)
                amplification = wrote / payload if payload else float("nan")
                print(
                    f"| {name} | {mode} | {human(payload * per_hour)} | "
                    f"{human(wrote * per_hour)} | {amplification:.2f}x |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
