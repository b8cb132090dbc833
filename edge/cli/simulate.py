"""``can-telemetry simulate``: the demo vehicle's traffic (or a database's) on any python-can
bus, paced in real time; with ``--ecus``, its ECUs answer diagnostic requests."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from typing import Any

from edge.cli.arguments import seconds
from edge.errors import ConfigError

__all__ = ["add_subparser"]


def add_subparser(subparsers: Any) -> None:
    """Add ``simulate`` to the CLI's subparsers."""
    sim = subparsers.add_parser(
        "simulate", help="put simulated vehicle traffic on a python-can bus"
    )
    sim.add_argument("--interface", default="socketcan", help="python-can interface")
    sim.add_argument("--channel", default="vcan0", help="python-can channel")
    sim.add_argument("--dbc", help="database to drive (default: the demo vehicle)")
    sim.add_argument("--duration", type=seconds, default=60.0, help="seconds of driving")
    sim.add_argument("--speed", default="1", help="a factor (1 = real time) or max")
    sim.add_argument("--fd", action="store_true", help="open the bus in CAN FD mode")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--ecus",
        action="store_true",
        help="also answer diagnostic requests (OBD-II, UDS, J1939) as the demo vehicle's ECUs",
    )
    sim.set_defaults(func=_do_simulate)


def _do_simulate(args: argparse.Namespace) -> int:
    import can

    from edge.config.model import parse_speed
    from edge.processing.database import load_database
    from edge.runloop import stopping_on_signals  # metrics: prometheus-client, the edge extra
    from edge.simulator.vehicle import VehicleSimulator, run_simulation, simulated_ecus

    speed = parse_speed(args.speed)
    database = load_database(args.dbc) if args.dbc else None
    simulator = VehicleSimulator(database, seed=args.seed, start_time=time.time())
    kwargs: dict[str, Any] = {"fd": True} if args.fd else {}
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel, **kwargs)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise ConfigError(
            "--interface", f"cannot open {args.interface}:{args.channel}: {exc}"
        ) from exc
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.enter_context(stopping_on_signals(stop))
        stack.enter_context(bus)
        if args.ecus:  # on a connection of their own: they filter what they read
            ecu_bus = stack.enter_context(can.Bus(interface=args.interface, channel=args.channel))
            stack.enter_context(simulated_ecus(ecu_bus, simulator))
        sent = run_simulation(bus, simulator, args.duration, speed=speed, stop=stop)
    print(f"sent {sent} frames on {args.interface}:{args.channel}", file=sys.stderr)
    return 0
