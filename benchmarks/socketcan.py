"""Benchmark of the module's SocketCAN read path on vcan0 (issue 6). Prints markdown.

    bash .ci/vcan --bench                        # on a kernel with vcan: the host's, or UML
    .venv/bin/python benchmarks/socketcan.py     # where vcan0 is up already

The reader is the module's own :class:`~edge.ingest.source.BusSource` (``DropCountingReceiver``, the
default receive buffer, the kernel filters ``Processor.filters()`` makes for the bundled demo
DBC) in a thread, handing its chunks to a consumer thread that only counts them. A separate
sender process writes to vcan0: ``cangen`` (can-utils) for the flood when it is installed, else,
and for paced runs and the ID mix, this file run as ``--send`` (a tight loop of ``send`` calls
on a raw socket, frames built in advance). Measured:

1. flood: the sender as fast as it can; frames/s received, the kernel's drop count
   (``SO_RXQ_OVFL``) and sent = received + dropped, sent being vcan0's own ``tx_packets``;
2. paced: the sender at fixed rates, stepped from the flood's received rate; the highest rate
   at which the reader keeps up (no drops, and no queue building up in the receive buffer,
   which would only postpone them), confirmed in a longer run; then, at half that rate, the
   reader as the module runs it and with a short pause after each empty read (an experiment,
   patched in here: frames per wake-up);
3. kernel filters: 76 % of the frames with IDs the filters exclude (as on the J1939 truck of
   the corpus), flooded and paced, with the module's filters and without, and the wanted or the
   unwanted frames alone; wanted frames/s received, the reader's wake-ups and CPU time;
4. the cost of one read: a full receive queue drained with plain ``recv`` calls and with
   ``DropCountingReceiver.recv`` (no sender running).

Under User-Mode Linux every figure is a lower bound: the kernel's CAN stack is real, but a system
call costs tens of microseconds instead of a fraction of one, and sender and reader share a
single CPU. :func:`report` returns the markdown; see benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHANNEL = "vcan0"
SYSFS = Path("/sys/class/net")
FLOOD_SECONDS = 2.5
STEP_SECONDS = 2.0
CONFIRM_SECONDS = 3.5
MIX_SECONDS = 2.5
#: A paced sender wakes up at most this often and sends what is due (a burst at high rates).
TICK = 0.002
STEP_FACTOR = 1.25
MAX_STEPS = 6
#: The pause tried after an empty read (seconds).
NAP = 0.01
#: The reader keeps up at a rate if nothing was dropped and, when the sender stops, at most this
#: much of the rate is still waiting in the receive buffer (a reader that falls behind builds a
#: queue, which the buffer absorbs for a while and then drops).
BACKLOG_SECONDS = 0.2
MIN_BACKLOG = 512  # frames: two of the source's chunks
UNWANTED_PER_100 = 76  # share of the J1939 truck log's frames that no DBC message matches
DRAIN_FRAMES = 8000

_CAN_EFF_FLAG = 0x80000000
_CAN_EFF_MASK = 0x1FFFFFFF
_FRAME = struct.Struct("=IB3x8s")  # struct can_frame: id, len, padding, 8 data bytes


# --- the sender (a separate process: this file with --send) ----------------------------------


def sender_frames(pattern: str, filters: Sequence[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    """One cycle of frames to send, each as ``struct can_frame`` bytes with whether the module's
    ``filters`` let it through. ``wanted``: every frame is of a selected message; ``mix``: of
    every 100 frames, :data:`UNWANTED_PER_100` have IDs the filters exclude, half of them
    standard IDs, half J1939-style extended IDs of other PGNs."""
    wanted: list[int] = []
    for f in filters:
        can_id, mask = f["can_id"], f["can_mask"]
        if f.get("extended"):
            free = _CAN_EFF_MASK & ~mask  # J1939: priority and source address
            wanted += [_CAN_EFF_FLAG | can_id & mask | (0x0C000000 | sa) & free for sa in (0, 3)]
        else:
            wanted.append(can_id & mask)
    unwanted_std = [i for i in range(0x001, 0x800, 0x25) if not passes(i, False, filters)]
    unwanted_ext = [
        0x18000000 | pgn << 8 | sa
        for pgn in range(0xFE00, 0xFF00, 0x0B)
        for sa in (0x00, 0x17)
        if not passes(0x18000000 | pgn << 8 | sa, True, filters)
    ]
    unwanted = [x for pair in zip(unwanted_std, unwanted_ext, strict=False) for x in pair]
    unwanted = [u if u < 0x800 else u | _CAN_EFF_FLAG for u in unwanted]
    frames = []
    w = u = 0
    for i in range(100):
        if pattern == "wanted" or (
            pattern == "mix" and (i * (100 - UNWANTED_PER_100)) % 100 < 100 - UNWANTED_PER_100
        ):
            can_id, w = wanted[w % len(wanted)], w + 1
        else:
            can_id, u = unwanted[u % len(unwanted)], u + 1
        frames.append((_FRAME.pack(can_id, 8, bytes([i] * 8)), can_id in wanted))
    return frames


def passes(can_id: int, extended: bool, filters: Sequence[dict[str, Any]]) -> bool:
    """Whether a kernel filter list (python-can's ``can_filters``) lets a data frame through."""
    return any(
        bool(f.get("extended")) == extended and (can_id ^ f["can_id"]) & f["can_mask"] == 0
        for f in filters
    )


def send(channel: str, rate: float, seconds: float, count: int, pattern: str, filters: str) -> None:
    """The sender process: says ``ready``, waits for a line on stdin, then sends ``pattern`` at
    ``rate`` frames/s (0: as fast as it can) for ``seconds`` or ``count`` frames, whichever comes
    first, and prints what it did as JSON."""
    frames = sender_frames(pattern, json.loads(filters))
    data = [f for f, _ in frames]
    sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    sock.bind((channel,))
    print("ready", flush=True)
    sys.stdin.readline()
    write = sock.send
    n = len(data)
    sent = 0
    start = time.monotonic()
    end = start + seconds
    count = count or 1 << 62
    try:
        if rate <= 0:
            while sent < count and time.monotonic() < end:
                for frame in data[: min(n, count - sent)]:
                    write(frame)
                sent += min(n, count - sent)
        else:
            while sent < count:
                now = time.monotonic()
                if now >= end:
                    break
                due = min(count, int((now - start) * rate) + 1)
                while sent < due:
                    write(data[sent % n])
                    sent += 1
                wait = max(start + (sent + 1) / rate, now + TICK) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
    finally:
        stopped = time.monotonic()
        cycles, rest = divmod(sent, n)
        wanted = cycles * sum(w for _, w in frames) + sum(w for _, w in frames[:rest])
        print(json.dumps({"sent": sent, "wanted": wanted, "start": start, "end": stopped}))


# --- the reader --------------------------------------------------------------------------------


def tx_packets(channel: str = CHANNEL) -> int:
    """Frames sent on the interface so far, by anyone: the kernel's own count."""
    return int((SYSFS / channel / "statistics" / "tx_packets").read_text())


class Reader:
    """The module's BusSource on vcan0, run as the module runs it: its own thread, chunks handed
    over through a FrameQueue to a consumer thread (which only counts them here)."""

    def __init__(
        self, filters: list[dict[str, Any]] | None, wanted: frozenset[int] = frozenset()
    ) -> None:
        from edge.ingest.source import BusSource, FrameQueue, open_bus

        self.receive_buffer = 0

        def opener(config: Any, flt: Any) -> Any:
            bus: Any = open_bus(config, flt)
            self.receive_buffer = bus.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            return bus

        self.source = BusSource(bus_config(), filters, opener=opener)
        self.out = FrameQueue()
        self.stop = threading.Event()
        self.done = threading.Event()
        self.received = 0
        self.chunks = 0
        self.wanted = wanted  # IDs (with the EFF flag) whose frames the consumer counts apart
        self.wanted_received = 0
        self.last_chunk = 0.0
        self.peak_backlog = 0
        self.tx0 = 0
        self._threads = [
            threading.Thread(target=self.source.run, args=(self.out, self.stop), daemon=True),
            threading.Thread(target=self._consume, daemon=True),
            threading.Thread(target=self._monitor, daemon=True),
        ]

    def __enter__(self) -> Reader:
        self.tx0 = tx_packets()
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10
        while not self.source.connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot open {CHANNEL}: {self.source.last_error}")
            time.sleep(0.01)
        time.sleep(0.05)  # into its first recv
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.done.set()
        for thread in self._threads:
            thread.join(5)

    def _consume(self) -> None:
        get = self.out.get
        wanted = self.wanted
        while not self.done.is_set() or self.out.qsize():
            chunk = get(0.05)
            if chunk:
                self.received += len(chunk)
                self.chunks += 1
                if wanted:
                    self.wanted_received += sum(
                        (m.arbitration_id | _CAN_EFF_FLAG if m.is_extended_id else m.arbitration_id)
                        in wanted
                        for m in chunk
                    )
                self.last_chunk = time.monotonic()

    def _monitor(self) -> None:
        while not self.done.wait(0.02):
            self.peak_backlog = max(self.peak_backlog, self.backlog())

    def backlog(self) -> int:
        """Frames sent since the start that the source has neither read nor seen dropped."""
        stats = self.source.stats()
        return tx_packets() - self.tx0 - int(stats["frames"]) - int(stats["kernel_dropped"])

    def dropped(self) -> int:
        return int(self.source.stats()["kernel_dropped"])

    def settle(self, expected: int, timeout: float = 15.0) -> None:
        """Wait until ``expected`` frames are read or counted as dropped (the drop counter is
        read when the bus goes quiet), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.source.stats()
            if (
                stats["frames"] + stats["kernel_dropped"] >= expected
                and self.received >= stats["frames"]
            ):
                return
            time.sleep(0.02)


def bus_config() -> Any:
    return module_config().buses[0]


def module_config() -> Any:
    from edge.config.model import parse_config
    from edge.simulator.vehicle import DEMO_DBC

    return parse_config(
        {
            "vehicle_id": "bench-socketcan",
            "buses": [
                {
                    "name": "can0",
                    "interface": "socketcan",
                    "channel": CHANNEL,
                    "dbc": [str(DEMO_DBC)],
                    "j1939": True,
                }
            ],
        }
    )


def module_filters() -> list[dict[str, Any]]:
    """The kernel filters the module installs for the demo DBC, every signal selected."""
    from edge.processing.processor import Processor

    return Processor(module_config(), lambda build: 0).filters("can0")


# --- runs --------------------------------------------------------------------------------------


@dataclass
class Run:
    sender: str
    asked: float  # frames/s, 0: flood
    sent: int  # vcan0's tx_packets over the run
    sender_count: int | None  # what the sender says it sent (None: cangen does not say)
    wanted: int  # frames among ``sent`` that the module's filters select
    wanted_received: int
    send_seconds: float
    received: int
    dropped: int
    receive_seconds: float  # from the sender's start to the last chunk handed over
    cpu: float  # the reader process's CPU seconds (user + system) over the run
    window: float  # wall seconds over which ``cpu`` was measured
    chunks: int  # chunks the source handed over: one per wake-up that found frames
    end_backlog: int  # frames waiting in the receive buffer when the sender stopped
    peak_backlog: int
    receive_buffer: int

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_seconds if self.send_seconds else 0.0

    @property
    def receive_rate(self) -> float:
        return self.received / self.receive_seconds if self.receive_seconds else 0.0

    @property
    def cpu_share(self) -> float:
        """The reader's CPU time as a share of one CPU's time."""
        return self.cpu / self.window if self.window else 0.0

    @property
    def per_chunk(self) -> float:
        return self.received / self.chunks if self.chunks else 0.0

    @property
    def balanced(self) -> bool:
        return self.sent == self.received + self.dropped

    def keeps_up(self) -> bool:
        limit = max(MIN_BACKLOG, self.asked * BACKLOG_SECONDS)
        return self.dropped == 0 and self.end_backlog <= limit and self.balanced


class Sender:
    """A sender process: cangen, or this file with --send."""

    def __init__(
        self,
        rate: float,
        seconds: float,
        pattern: str = "wanted",
        filters: Sequence[dict[str, Any]] = (),
        count: int = 0,
        cangen_id: str | None = None,
    ) -> None:
        self.cangen_id = cangen_id
        self.seconds = seconds
        if cangen_id is not None:
            self.name = f"cangen -g 0 -I {cangen_id} -L 8 -D i"
            self.argv = ["cangen", CHANNEL, "-g", "0", "-I", cangen_id, "-L", "8", "-D", "i"]
            self.proc: subprocess.Popen[str] | None = None
            return
        self.name = "python send loop"
        argv = [sys.executable, str(Path(__file__).resolve()), "--send", CHANNEL]
        argv += [str(rate), str(seconds), str(count), pattern, json.dumps(list(filters))]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError("the sender process did not start")

    def run(self) -> tuple[float, float, dict[str, Any] | None]:
        """Send; return the start and end (time.monotonic) and the sender's report."""
        if self.cangen_id is not None:
            start = time.monotonic()
            proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
            try:
                proc.wait(self.seconds)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
            return start, time.monotonic(), None
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out, _ = self.proc.communicate(timeout=self.seconds + 30)
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report["start"], report["end"], report


def measure(
    filters: list[dict[str, Any]] | None,
    sender: Sender,
    asked: float = 0.0,
    wanted: frozenset[int] = frozenset(),
) -> Run:
    """One run: the reader opened with ``filters``, the sender sending, everything read."""
    with Reader(filters, wanted) as reader:
        cpu0, wall0 = time.process_time(), time.monotonic()
        start, end, said = sender.run()
        end_backlog = reader.backlog()
        sent = tx_packets() - reader.tx0
        # Frames the filters let through: all of them, but of a mix only the wanted ones.
        reader.settle(said["wanted"] if said and filters is not None else sent)
        cpu, window = time.process_time() - cpu0, time.monotonic() - wall0
    return Run(
        sender=sender.name,
        asked=asked,
        sent=sent,
        sender_count=said["sent"] if said else None,
        wanted=said["wanted"] if said else sent,
        wanted_received=reader.wanted_received if wanted else reader.received,
        send_seconds=end - start,
        received=reader.received,
        dropped=reader.dropped(),
        receive_seconds=max(reader.last_chunk, end) - start,
        cpu=cpu,
        window=window,
        chunks=reader.chunks,
        end_backlog=max(0, end_backlog),
        peak_backlog=reader.peak_backlog,
        receive_buffer=reader.receive_buffer,
    )


def drain(
    filters: list[dict[str, Any]], frames: int = DRAIN_FRAMES, repeat: int = 3
) -> dict[str, float]:
    """Frames/s reading a full receive queue, no sender running, best of ``repeat``: with plain
    ``recv`` calls, and with ``DropCountingReceiver.recv(0)`` (recvmsg with ancillary data,
    parsing, a ``can.Message``). One sender fills both sockets at once."""
    from edge.ingest.socketcan import DropCountingReceiver, set_receive_buffer

    best = {"recv": 0.0, "receiver": 0.0}
    for i in range(repeat):
        socks = {}
        try:
            for kind in best:
                sock = socks[kind] = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
                set_receive_buffer(sock, 4 * 1024 * 1024)
                sock.bind((CHANNEL,))
                sock.setblocking(False)
            Sender(0, 60, "wanted", filters, count=frames).run()
            for kind in list(best)[:: 1 if i % 2 else -1]:  # alternate the order
                sock = socks[kind]
                got = 0
                started = time.perf_counter()
                if kind == "recv":
                    recv = sock.recv
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            recv(72)
                            got += 1
                else:
                    receive = DropCountingReceiver(sock).recv
                    while receive(0) is not None:
                        got += 1
                best[kind] = max(best[kind], got / (time.perf_counter() - started))
        finally:
            for sock in socks.values():
                sock.close()
    return best


# --- the report ----------------------------------------------------------------------------------


def kernel() -> tuple[str, bool]:
    """A description of the kernel we run on, and whether it is User-Mode Linux."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    uml = platform.machine() == "um" or "User Mode Linux" in cpuinfo
    cpus = os.cpu_count() or 1
    text = f"Linux {platform.release()}"
    if uml:
        host = re.search(r"^host\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
        text += f", **User-Mode Linux** ({cpus} CPU{'s' if cpus > 1 else ''}"
        text += f"; host: {host.group(1).strip()})" if host else ")"
    else:
        text += f" ({platform.machine()}, {cpus} CPUs)"
    return text, uml


def syscall_us() -> float:
    """Microseconds one trivial system call takes here."""
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        os.getppid()
    return (time.perf_counter() - started) / n * 1e6


def k(rate: float) -> str:
    return f"{rate / 1000:,.1f}k"


def report(progress: Callable[[str], None] | None = None) -> str:
    """Run the benchmark (45 to 60 s under User-Mode Linux) and return its markdown."""
    say = progress or (lambda _: None)
    if sys.platform != "linux" or not hasattr(socket, "AF_CAN"):
        return "SocketCAN read path: skipped (not Linux)"
    if not (SYSFS / CHANNEL).exists():
        return (
            f"SocketCAN read path: skipped (no {CHANNEL} on this kernel; "
            "`bash .ci/vcan --bench` finds one: the host's, or User-Mode Linux)"
        )
    flags = int((SYSFS / CHANNEL / "flags").read_text(), 0)
    if not flags & 1:
        return f"SocketCAN read path: skipped ({CHANNEL} is down)"
    import logging

    quiet = logging.getLogger("edge")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the receive-buffer warning: reported below instead
    try:
        return _report(say)
    finally:
        quiet.setLevel(level)


def rounded(rate: float) -> float:
    """``rate`` to two significant digits (frames/s)."""
    return float(f"{rate:.2g}")


def search(filters: list[dict[str, Any]], rate: float, say: Callable[[str], None]) -> list[Run]:
    """Paced runs from ``rate`` up (while the reader keeps up) or down (until it does), by
    :data:`STEP_FACTOR`, until a rate it keeps up with lies next to one it does not."""
    steps: list[Run] = []
    for _ in range(MAX_STEPS):
        say(f"socketcan: paced at {rate:,.0f} frames/s")
        run = measure(filters, Sender(rate, STEP_SECONDS, "wanted", filters), rate)
        steps.append(run)
        if run.send_rate < 0.95 * rate:
            break  # the sender cannot go faster
        up = any(r.keeps_up() for r in steps)
        down = any(not r.keeps_up() for r in steps)
        if up and down:
            break
        rate = rounded(rate * STEP_FACTOR if run.keeps_up() else rate / STEP_FACTOR)
    return steps


@contextlib.contextmanager
def napping(nap: float) -> Iterator[None]:
    """Make BusSource sleep ``nap`` seconds before it waits for frames again after it has read
    its socket empty (not after a full chunk), so that frames gather into larger chunks: an
    experiment on what a short pause would save, without changing edge/."""
    import edge.ingest.source
    from edge.ingest.socketcan import DropCountingReceiver, ReceivedFrame

    module: Any = edge.ingest.source  # where BusSource looks the class up

    class Napping(DropCountingReceiver):
        empty = False  # the last read without waiting found the socket empty

        def recv(self, timeout: float | None = None) -> ReceivedFrame | None:
            if timeout != 0 and self.empty:
                time.sleep(nap)
            received = super().recv(timeout)
            if timeout == 0:
                self.empty = received is None
            return received

    saved = module.DropCountingReceiver
    module.DropCountingReceiver = Napping
    try:
        yield
    finally:
        module.DropCountingReceiver = saved


def _report(say: Callable[[str], None]) -> str:
    from edge.ingest.source import DEFAULT_RECEIVE_BUFFER

    started = time.monotonic()
    description, uml = kernel()
    syscall_before = syscall_us()
    filters = module_filters()
    mix_ids = frozenset(_FRAME.unpack(f)[0] for f, w in sender_frames("mix", filters) if w)
    wanted_share = (100 - UNWANTED_PER_100) / 100

    say("socketcan: flood")
    if shutil.which("cangen"):
        flood = measure(filters, Sender(0, FLOOD_SECONDS, cangen_id=f"{filters[0]['can_id']:X}"))
    else:
        flood = measure(filters, Sender(0, FLOOD_SECONDS, "wanted", filters))

    steps = search(filters, rounded(max(1000.0, flood.receive_rate)), say)
    passed = [r for r in steps if r.keeps_up()]
    best = max(passed, key=lambda r: r.asked) if passed else None
    # A longer run at the best rate; if it does not keep up after all (near the limit, a
    # reader can hold out for a step and then fall behind), one step lower.
    confirms: list[Run] = []
    for rate in [best.asked, rounded(best.asked / STEP_FACTOR)] if best else []:
        say(f"socketcan: paced at {rate:,.0f} frames/s for {CONFIRM_SECONDS:.0f} s")
        confirms.append(measure(filters, Sender(rate, CONFIRM_SECONDS, "wanted", filters), rate))
        if confirms[-1].keeps_up():
            break
    confirm = confirms[-1] if confirms else None
    # Half the rate the reader keeps up with (half the lowest rate tried if none): where it
    # waits for frames much of the time, as on a usual bus.
    lossless = confirm.asked if confirm and confirm.keeps_up() else min(r.asked for r in steps) / 2
    half = rounded(lossless / 2)

    say(f"socketcan: paced at {half:,.0f} frames/s, without and with a pause after empty reads")
    plain = measure(filters, Sender(half, MIX_SECONDS, "wanted", filters), half)
    with napping(NAP):
        nap = measure(filters, Sender(half, MIX_SECONDS, "wanted", filters), half)

    say("socketcan: ID mix, flood, with and without kernel filters")
    mix_flood = {
        "module's": measure(filters, Sender(0, MIX_SECONDS, "mix", filters), wanted=mix_ids),
        "none": measure(None, Sender(0, MIX_SECONDS, "mix", filters), wanted=mix_ids),
    }
    # Paced at a rate the reader keeps up with even without filters, so that all of it is read.
    mix_rate = half
    say(f"socketcan: ID mix, paced at {mix_rate:,.0f} frames/s")
    mix_paced = {
        "module's": measure(
            filters, Sender(mix_rate, MIX_SECONDS, "mix", filters), mix_rate, mix_ids
        ),
        "none": measure(None, Sender(mix_rate, MIX_SECONDS, "mix", filters), mix_rate, mix_ids),
        "wanted only": measure(
            filters,
            Sender(mix_rate * wanted_share, MIX_SECONDS, "wanted", filters),
            mix_rate * wanted_share,
        ),
    }
    say("socketcan: unwanted IDs only, flood, with kernel filters")
    unwanted = measure(filters, Sender(0, MIX_SECONDS, "unwanted", filters))
    say("socketcan: draining a full receive queue")
    drained = drain(filters)

    syscall_after = syscall_us()
    syscall = f"{syscall_before:.{0 if uml else 2}f} µs"
    if abs(syscall_after - syscall_before) > 0.3 * syscall_before:
        syscall += f" at the start of the run and {syscall_after:.{0 if uml else 2}f} µs at its end"

    lines: list[str] = []
    add = lines.append
    add(f"## SocketCAN read path ({CHANNEL})\n")
    add(f"Kernel: {description}. Python {platform.python_version()}.")
    if uml:
        add(
            f"\n**User-Mode Linux figures**: the kernel's CAN stack (af_can, can-raw, vcan, "
            f"filters, receive buffer, drop counter) is real, but a trivial system call costs "
            f"{syscall} here instead of well under 1 µs on hardware, a switch "
            "between threads or processes far more, sender and reader share one CPU, and CPU "
            "time is counted in 10 ms ticks (a few points of noise over a run). The rates are a "
            "lower bound, not a gateway figure; the ratios carry over better."
        )
    else:
        add(f"\nA trivial system call costs {syscall} here.")
    buffer = flood.receive_buffer
    add(
        f"\nReader: the module's `BusSource` (`DropCountingReceiver`: kernel receive timestamps, "
        f"`SO_RXQ_OVFL`) in its own thread, with the {len(filters)} kernel filters the module "
        f"sets for the demo DBC (J1939 on) and its receive buffer "
        f"({DEFAULT_RECEIVE_BUFFER / 1048576:.0f} MiB asked, "
        f"{buffer / 1048576:.1f} MiB reserved by the kernel, about {buffer // 800:,} frames), "
        "handing chunks through a `FrameQueue` to a thread that only counts them. Reader CPU = "
        "that process's CPU time (`time.process_time`) as a share of one CPU. Sent = vcan0's "
        "`tx_packets`; dropped = the socket's `SO_RXQ_OVFL` counter. Classic frames, 8 data "
        "bytes.\n"
    )

    add("**Flood**: the sender as fast as it can, every frame selected.\n")
    add(
        "| sender | seconds | sent | sent/s | received | received/s | dropped "
        "| sent = received + dropped | frames per chunk |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    add(
        f"| `{flood.sender}` | {flood.send_seconds:.1f} | {flood.sent:,} | {k(flood.send_rate)} "
        f"| {flood.received:,} | **{k(flood.receive_rate)}** | {flood.dropped:,} "
        f"| {balance(flood)} | {flood.per_chunk:.0f} |"
    )
    add(
        "\nreceived/s = frames handed over / time from the sender's start to the last chunk (the "
        "reader drains the buffer after the sender stops). The sender outruns the reader: the "
        "buffer fills, and the kernel drops and counts the rest."
        + (
            " On one CPU the flooding sender also takes CPU time from the reader, so this is "
            "below what the reader can take when the sender is paced."
            if (os.cpu_count() or 1) == 1
            else ""
        )
    )

    add(
        f"\n**Paced**: a python sender at a fixed rate ({TICK * 1000:.0f} ms ticks), "
        f"{STEP_SECONDS:.0f} s a step, in steps of {STEP_FACTOR - 1:.0%} from the flood's "
        f"received/s. The reader keeps up when nothing is dropped and at most "
        f"{BACKLOG_SECONDS:.1f} s of traffic (at least {MIN_BACKLOG} frames) is still in the "
        "receive buffer when the sender stops (a growing queue would only postpone the "
        "drops).\n"
    )
    add(
        "| rate asked | sent/s | sent | received | dropped | queued at end (peak) "
        "| frames per chunk | reader CPU | keeps up |"
    )
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in [*steps, *confirms]:
        verdict = "yes" if r.keeps_up() else "**no**"
        if r.send_rate < 0.95 * r.asked:
            verdict += " (the sender fell short of the rate)"
        label = f"{k(r.asked)}/s"
        if r in confirms:
            label += f" for {r.send_seconds:.1f} s"
        add(
            f"| {label} | {k(r.send_rate)} | {r.sent:,} | {r.received:,} | {r.dropped:,} "
            f"| {r.end_backlog:,} ({r.peak_backlog:,}) | {r.per_chunk:.1f} "
            f"| {r.cpu_share:.0%} | {verdict} |"
        )
    if confirm and confirm.keeps_up():
        above = [r.asked for r in [*steps, *confirms] if not r.keeps_up()]
        add(
            f"\n**Received without loss: {k(confirm.send_rate)} frames/s** ({confirm.sent:,} "
            f"frames in {confirm.send_seconds:.1f} s, {confirm.dropped} dropped)"
            + (
                f"; not at {k(min(above))}/s."
                if above
                else f"; it kept up with every rate tried (up to "
                f"{k(max(r.send_rate for r in steps))}/s sent): its limit is higher."
            )
        )
    else:
        add("\nThe reader did not keep up for long at any rate tried.")
    add(
        "Frames per chunk = frames read per wake-up (the source reads its socket until it is "
        "empty, hands the chunk over, then waits in `select`): the fewer, the more each frame "
        "costs."
    )
    add(
        f"\n**Wake-ups**: at {k(half)} frames/s, half that rate, the module's reader finds "
        f"{plain.per_chunk:.1f} frames per wake-up and needs {plain.cpu_share:.0%} of a CPU; "
        f"with a {NAP * 1000:.0f} ms pause after each empty read (patched in here as an "
        f"experiment, not what the module does) {nap.per_chunk:.1f} frames per wake-up and "
        f"{nap.cpu_share:.0%} of a CPU"
        + (
            "."
            if nap.keeps_up() and plain.keeps_up()
            else f" ({plain.dropped:,} and {nap.dropped:,} frames dropped)."
        )
    )

    add(
        f"\n**Kernel ID filters**: {UNWANTED_PER_100} of every 100 frames sent have IDs that no "
        "selected message has (standard IDs and J1939 PGNs not in the DBC), like 76 % of the "
        "J1939 truck log's frames. With the module's filters the kernel discards them in the "
        "sender's system call and the reader is never woken for them.\n"
    )
    add(
        "| kernel filters | sender | sent | of them wanted | filtered out by the kernel "
        "| received | dropped | sent = received + dropped + filtered | wanted received/s "
        "| reader wake-ups | reader CPU |"
    )
    add("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    rows = [(f"flood, {k(r.send_rate)}/s", n, r) for n, r in mix_flood.items()]
    rows += [
        (f"{k(r.asked)}/s{', wanted IDs only' if n == 'wanted only' else ''}", n, r)
        for n, r in mix_paced.items()
    ]
    rows.append((f"flood, {k(unwanted.send_rate)}/s, unwanted IDs only", "unwanted", unwanted))
    for how, name, r in rows:
        filtered = r.sent - r.wanted if name != "none" else 0
        ok = r.sent == r.received + r.dropped + filtered
        installed = "none" if name == "none" else "the module's"
        wanted_rate = f"**{k(r.wanted_received / r.receive_seconds)}**" if r.wanted else "-"
        add(
            f"| {installed} | {how} "
            f"| {r.sent:,} | {r.wanted:,} | {filtered:,} | {r.received:,} | {r.dropped:,} "
            f"| {'yes' if ok else '**NO**'} | {wanted_rate} "
            f"| {r.chunks:,} | {r.cpu_share:.0%} |"
        )
    flood_with, flood_without = mix_flood.values()
    with_f, without, only = mix_paced.values()
    add(
        f"\nFlooding, the reader with the filters got {flood_with.wanted_received:,} of the "
        f"{flood_with.wanted:,} wanted frames ({flood_with.dropped:,} dropped); without them "
        f"{flood_without.wanted_received:,} of {flood_without.wanted:,}, the kernel dropping "
        f"{flood_without.dropped / max(flood_without.sent, 1):.0%} of all frames, wanted or not. "
        f"At {k(mix_rate)} frames/s the reader needs {without.cpu_share:.0%} of a CPU without "
        + (
            "filters"
            if not without.dropped
            else f"filters (and still drops {without.dropped:,} frames)"
        )
        + f", {with_f.cpu_share:.0%} with them, and {only.cpu_share:.0%} when only the "
        f"wanted frames are sent at all. The unwanted frames alone ({unwanted.sent:,}, "
        f"{k(unwanted.send_rate)}/s) were read {unwanted.received} times, woke the reader "
        f"{unwanted.chunks} times and left it at {unwanted.cpu_share:.0%} of a CPU: its idle "
        "rounds (a quiet check every 0.1 s, this benchmark's monitor)."
    )

    add(
        f"\n**One read**: a full receive queue ({DRAIN_FRAMES:,} frames) drained in a loop, no "
        "sender running, best of 3.\n"
    )
    add("| read | frames/s | µs per frame |")
    add("|---|---:|---:|")
    add(
        f"| plain `socket.recv` (one system call, no parsing) | {k(drained['recv'])} "
        f"| {1e6 / drained['recv']:.1f} |"
    )
    add(
        f"| `DropCountingReceiver.recv(0)` (recvmsg with timestamp and drop counter, "
        f"`can.Message`) | {k(drained['receiver'])} | {1e6 / drained['receiver']:.1f} |"
    )
    runs = [flood, *steps, *confirms, plain, nap, *mix_flood.values(), *mix_paced.values()]
    runs.append(unwanted)
    other = [r for r in runs if r.sender_count is not None and r.sender_count != r.sent]
    if other:
        add(
            f"\n**Other traffic on {CHANNEL}**: in {len(other)} runs vcan0's `tx_packets` "
            "differs from what the sender says it sent; those runs' figures are off."
        )
    add(f"\n_SocketCAN benchmark run time: {time.monotonic() - started:.0f} s._")
    return "\n".join(lines)


def balance(r: Run) -> str:
    text = f"{r.sent:,} = {r.received:,} + {r.dropped:,}"
    if r.balanced:
        return f"yes: {text}"
    return f"**NO**: {r.sent:,} sent, {r.received + r.dropped:,} accounted for"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--send"]:
        channel, rate, seconds, count, pattern, filters = argv[1:7]
        send(channel, float(rate), float(seconds), int(count), pattern, filters)
        return 0
    if argv:
        print(f"usage: {Path(__file__).name} (no arguments)", file=sys.stderr)
        return 2
    print(report(lambda line: print(line, file=sys.stderr, flush=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
