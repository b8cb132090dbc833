"""Benchmark of diagnostics (issue 13): the bus load a typical polling set adds, and its CPU
cost next to the pipeline's. Prints markdown.

    .venv/bin/python benchmarks/diagnostics.py [--seconds 20] [--functional]

The module's own :class:`~edge.diagnostics.service.Diagnostics` polls the simulated ECUs of
edge/simulator/ecus.py on python-can's virtual bus, in real time, with this polling set:

* OBD-II: engine speed and vehicle speed every second, coolant, throttle and fuel level every
  5 s (PIDs 0C, 0D; 05, 11, 2F), supported-PID discovery and the VIN once;
* UDS: two ECUs, ReadDTCInformation every 10 s each (multi-frame answers), and two DIDs once;
* J1939: DM1 received (the engine broadcasts it every second as a BAM), the VIN requested once.

With ``--functional`` the OBD-II requests go to every ECU at once (0x7DF): the engine and the
transmission answer, and the diagnostics run eight ISO-TP stacks for 0x7E8-0x7EF (the
transmission's shared with its UDS client) instead of one.

A listener on the bus counts every frame by direction (our requests and flow controls, the
ECUs' answers, DM1/J1939 broadcasts, which the ECUs send whatever we do) and converts them to
bits: an 11-bit classic frame with 8 data bytes is 111 bits plus up to 24 stuff bits, a 29-bit
one 131 plus up to 29 (every frame here is padded to 8 bytes). The share of a 500 kbit/s bus
is given without and with worst-case stuffing.

CPU: the user+system time of the threads the diagnostics start (their schedule, their bus
connection's notifier, one can-isotp thread per ECU), read from /proc/self/task, over the run.
The simulated ECUs run in threads started before and are not counted. The pipeline's figure for
comparison is its cost per frame from benchmarks/run.py (500k to 4M frames/s on this machine:
0.25 to 2 microseconds a frame) at a full 500 kbit/s bus, about 4,000 frames/s.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time
import uuid
from pathlib import Path

import can

from edge.config.model import parse_config
from edge.diagnostics.service import Diagnostics
from edge.simulator.ecus import SimulatedEcus
from edge.simulator.vehicle import DEMO_DBC

BUS_BITRATE = 500_000
_TICKS = os.sysconf("SC_CLK_TCK")


def polling_set(channel: str, functional: bool = False) -> dict[str, object]:
    """The configuration of the typical polling set (see the module docstring)."""
    every = [{"pid": p, "period": 1.0} for p in (0x0C, 0x0D)]
    slow = [{"pid": p, "period": 5.0} for p in (0x05, 0x11, 0x2F)]
    obd: dict[str, object] = {"pids": every + slow}
    if functional:
        obd["functional"] = True
    return {
        "buses": [
            {"name": "car", "interface": "virtual", "channel": channel, "dbc": str(DEMO_DBC)}
        ],
        "diagnostics": {
            "buses": [
                {
                    "bus": "car",
                    "max_requests_per_second": 10,
                    "obd": obd,
                    "uds": [
                        {
                            "name": "TCM",
                            "request_id": 0x7E1,
                            "response_id": 0x7E9,
                            "dtc_period": 10.0,
                            "dids": [{"did": 0xF195, "name": "software", "kind": "ascii"}],
                        },
                        {
                            "name": "BMS",
                            "request_id": 0x7E4,
                            "response_id": 0x7EC,
                            "dtc_period": 10.0,
                            "dids": [{"did": 0xF18C, "name": "serial", "kind": "ascii"}],
                        },
                    ],
                    "j1939": {},
                }
            ]
        },
    }


def _bits(msg: can.Message) -> tuple[int, int]:
    """A frame's bits on the wire (8 data bytes): without and with worst-case bit stuffing."""
    data_bits = 8 * len(msg.data)
    if msg.is_extended_id:
        return 67 + data_bits, 67 + data_bits + (54 + data_bits - 1) // 4
    return 47 + data_bits, 47 + data_bits + (34 + data_bits - 1) // 4


def _cpu_seconds(tids: set[int]) -> float:
    total = 0
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def run(seconds: float, functional: bool = False) -> str:
    channel = f"bench-diag-{uuid.uuid4().hex[:8]}"
    counts: collections.Counter[str] = collections.Counter()
    bits = [0, 0]
    ours = {0x7DF, *range(0x7E0, 0x7E8)}  # requests (functional ones too), our flow controls
    lock = threading.Lock()

    def count(msg: can.Message) -> None:
        if msg.is_extended_id:
            pf = (msg.arbitration_id >> 16) & 0xFF
            if pf == 0xEA:
                kind = "J1939 requests (ours)"
            elif (msg.arbitration_id & 0xFF) == 0xF9:
                kind = "J1939 transport (ours)"
            else:
                kind = "J1939 broadcasts (DM1, VIN)"
        elif msg.arbitration_id in ours:
            kind = "ISO-TP requests and flow controls (ours)"
        else:
            kind = "ISO-TP answers"
        low, high = _bits(msg)
        with lock:
            counts[kind] += 1
            bits[0] += low
            bits[1] += high

    records: list[object] = []
    with (
        can.Bus(interface="virtual", channel=channel) as ecu_bus,
        can.Bus(interface="virtual", channel=channel) as spy,
    ):
        ecus = SimulatedEcus(ecu_bus)
        ecus.start()
        before = _tasks()
        notifier = can.Notifier(spy, [count])
        spy_tasks = _tasks() - before
        config = parse_config(polling_set(channel, functional))
        diagnostics = Diagnostics(config, records.extend)
        started = time.monotonic()
        diagnostics.start()
        diag_tasks = _tasks() - before - spy_tasks
        time.sleep(seconds)
        cpu = _cpu_seconds(diag_tasks)
        elapsed = time.monotonic() - started
        stats = diagnostics.stats()["car"]
        diagnostics.stop()
        notifier.stop()
        ecus.stop()
    total = sum(counts.values())
    lines = [
        f"Diagnostics polling set{' (OBD-II functional)' if functional else ''} over "
        f"{elapsed:.1f} s of real time (virtual bus, simulated ECUs):",
        "",
        "| frames | count | per second |",
        "|---|---:|---:|",
    ]
    for kind, n in sorted(counts.items()):
        lines.append(f"| {kind} | {n:,} | {n / elapsed:.1f} |")
    lines.append(f"| **all** | {total:,} | {total / elapsed:.1f} |")
    low, high = bits[0] / elapsed, bits[1] / elapsed
    lines += [
        "",
        f"Bus load: {low / 1000:.1f} to {high / 1000:.1f} kbit/s, "
        f"{100 * low / BUS_BITRATE:.2f} % to {100 * high / BUS_BITRATE:.2f} % of a 500 kbit/s bus "
        "(without and with worst-case bit stuffing).",
        f"Requests: {stats.get('requests', 0)}, answers: {stats.get('responses', 0)}, "
        f"timeouts: {stats.get('timeouts', 0)}; records sent: {len(records)}.",
        f"CPU of the diagnostics' {len(diag_tasks)} threads: {cpu:.2f} s in {elapsed:.1f} s, "
        f"{100 * cpu / elapsed:.2f} % of one core "
        f"({1000 * cpu / max(1, stats.get('requests', 0)):.1f} ms per request, idle polling "
        "included). The pipeline at a full 500 kbit/s bus (4,000 frames/s at 0.25-2 us a frame, "
        "benchmarks/run.py): 0.1-0.8 % of one core.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--functional", action="store_true", help="OBD-II requests to every ECU (0x7DF)"
    )
    args = parser.parse_args()
    print(run(args.seconds, args.functional))


if __name__ == "__main__":
    main()
