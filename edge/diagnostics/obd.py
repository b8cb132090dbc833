"""OBD-II (SAE J1979) requests: mode 01 PIDs, supported-PID discovery, the VIN (mode 09 PID 02),
physically addressed to one ECU or functionally to every OBD ECU at once.

The answers of mode 01 are not decoded here: they are frames on the bus like any other, and
the bus's OBD-II database (e.g. the CSS Electronics OBD2 DBC bundled as ``edge.dbc``'s
``obd2_css.dbc``) turns them into signals with units in the ordinary pipeline. This module only
asks, checks that answers came, and reads the two answers it needs itself (supported PIDs,
VIN).

Functional addressing (ISO 15765-4, what a scan tool does): the request is one single frame to
0x7DF, and every ECU that has an answer sends it from its own identifier, 0x7E8 to 0x7EF (ECU
*n* listens on 0x7E0 + *n*, where our flow control for its multi-frame answer goes). Each of
those eight pairs is an ISO-TP stack of can-isotp. How long answers are collected, never past
the request's timeout:

* supported-PID discovery and the VIN (once per start): the whole timeout, unless every ECU
  known to answer has answered: who is there is what they find out;
* after discovery, a PID: until every ECU that listed it has answered (one that does not is
  counted in ``missing``);
* without discovery: :data:`ANSWER_WINDOW` after the request (J1979: every ECU answers within
  50 ms), longer while a multi-frame answer is still arriving.

Two kinds of answer are not the answer, physically or functionally addressed. "Response
pending" (``7F <mode> 78``, ISO 15765-4 / ISO 14229) says the ECU's answer comes later: it is
waited for, and the wait goes on past the window, but never past the request's timeout (as a
UDS request's, see :meth:`IsoTpChannel.request`; J1979 allows P2*CAN, 5 s, after a 0x78, so an
ECU that takes it needs a ``timeout`` that long). An ECU that says only that has not answered
in time: counted in ``missing`` (functionally), a DiagnosticTimeout when no ECU answered. A
negative response naming another service (``7F <other> ..``) answers no request of ours: it is
ignored, as if that ECU had not answered (yet); so is, functionally, a positive answer to another
mode or PID (late, to an earlier request).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import can

from edge.diagnostics.transport import (
    DiagnosticError,
    DiagnosticTimeout,
    IsoTpChannel,
    NegativeResponse,
    is_response_pending,
    isotp_stack,
    names_another_service,
)

__all__ = [
    "ANSWER_WINDOW",
    "FUNCTIONAL_ID",
    "RESPONSE_IDS",
    "FunctionalObd",
    "ObdClient",
    "PhysicalObd",
    "parse_supported",
    "parse_vin",
]

log = logging.getLogger(__name__)

_NEGATIVE = 0x7F
_POSITIVE = 0x40
#: ISO 15765-4 11-bit identifiers: functional requests, and the answers of ECUs 1 to 8.
FUNCTIONAL_ID = 0x7DF
RESPONSE_IDS = tuple(range(0x7E8, 0x7F0))
_REQUEST_OFFSET = 8  # ECU n answers on 0x7E8 + n and listens on 0x7E0 + n
#: Seconds answers to a functional request are collected (5x J1979's P2CAN of 50 ms, for a
#: loaded gateway), unless the request's timeout is shorter.
ANSWER_WINDOW = 0.25
_POLL = 0.005


class ObdClient(ABC):
    """J1979 requests; :meth:`ask` sends one and returns every ECU's answer."""

    @abstractmethod
    def ask(self, mode: int, pid: int) -> dict[int, bytes]:
        """The raw answers to ``mode``/``pid``, by response identifier (at least one; they may
        be negative responses, never "response pending" or one naming another service: see
        the module docstring). Raises DiagnosticTimeout or TransportError."""

    def request(self, mode: int, pid: int) -> dict[int, bytes]:
        """The data bytes (after the echoed mode and PID) of every positive answer to
        ``mode``/``pid``, by response identifier. Raises NegativeResponse when every answer was
        negative, DiagnosticError when none answered what was asked, DiagnosticTimeout (also
        when the only answers were "response pending" or negative responses to another
        service: no answer to this request) or TransportError."""
        answers = self.ask(mode, pid)
        positive: dict[int, bytes] = {}
        negative: NegativeResponse | None = None
        unexpected: bytes | None = None
        for response_id, answer in sorted(answers.items()):
            if is_response_pending(answer, mode) or names_another_service(answer, mode):
                continue  # not an answer (ours never return one; another ask might)
            if len(answer) >= 3 and answer[0] == _NEGATIVE:
                negative = negative or NegativeResponse(answer[1], answer[2])
            elif len(answer) >= 2 and answer[0] == mode + _POSITIVE and answer[1] == pid:
                positive[response_id] = answer[2:]
            elif unexpected is None:
                unexpected = answer
        if positive:
            return positive
        if negative is not None:
            raise negative
        if unexpected is not None:
            raise DiagnosticError(
                f"unexpected answer {unexpected[:8].hex()} to {mode:02x} {pid:02x}"
            )
        raise DiagnosticTimeout(
            f"no answer to {mode:02x} {pid:02x}: 'response pending' or another service's refusal"
        )

    def supported_pids(self) -> dict[int, set[int]]:
        """Mode 01 PIDs each ECU says it supports, by response identifier (PIDs 0x00, 0x20,
        ... as long as the last bit of an ECU's answer says its next range exists)."""
        supported: dict[int, set[int]] = {}
        base = 0
        while base <= 0xE0:
            for response_id, data in self.request(0x01, base).items():
                supported.setdefault(response_id, set()).update(parse_supported(base, data))
            if not any(base + 0x20 in pids for pids in supported.values()):
                break
            base += 0x20
        return supported

    def vins(self) -> dict[int, str]:
        """The VIN (mode 09 PID 02, a multi-frame answer) of each ECU that gives one."""
        return {rid: parse_vin(data) for rid, data in self.request(0x09, 0x02).items()}


class PhysicalObd(ObdClient):
    """J1979 requests to one ECU over one ISO-TP channel."""

    def __init__(self, channel: IsoTpChannel, response_id: int) -> None:
        self.channel = channel
        self.response_id = response_id

    def ask(self, mode: int, pid: int) -> dict[int, bytes]:
        """The ECU's answer (see :meth:`ObdClient.ask`)."""
        return {self.response_id: self.channel.request(bytes((mode, pid)))}


class FunctionalObd(ObdClient):
    """J1979 requests to every OBD ECU at once (see the module docstring). ``send`` puts a
    frame on the bus (raising TransportError when it cannot), ``limit`` waits for the bus's
    rate limit. :meth:`open` starts the ISO-TP stacks, :meth:`close` stops them.

    ``shared`` maps a response identifier to the channel a UDS client already has on it: two
    stacks on one identifier would both answer a first frame with flow control. Its stack
    serves both, and a functional request holds its lock, so no UDS request runs meanwhile."""

    def __init__(
        self,
        bus: can.BusABC,
        notifier: can.Notifier,
        send: Callable[[can.Message], None],
        *,
        timeout: float = 1.0,
        limit: Callable[[], None] = lambda: None,
        shared: Mapping[int, IsoTpChannel] | None = None,
    ) -> None:
        self.timeout = timeout
        self._send = send
        self._limit = limit
        self._lock = threading.Lock()
        shared = {rid: channel for rid, channel in (shared or {}).items() if rid in RESPONSE_IDS}
        self._shared_locks = [shared[rid].lock() for rid in sorted(shared)]
        #: every ECU that answered so far, by response identifier
        self.responders: set[int] = set()
        #: the PIDs each ECU listed in discovery (None until discovery succeeded)
        self.discovered: dict[int, set[int]] | None = None
        #: answers an ECU that listed a PID (or gave a VIN before), or said "response pending",
        #: did not give in time
        self.missing = 0
        #: ISO-TP errors of the eight stacks by class name (lost frames, ...)
        self.errors: collections.Counter[str] = collections.Counter()
        self._own = {
            response_id: isotp_stack(
                bus,
                notifier,
                response_id - _REQUEST_OFFSET,
                response_id,
                timeout=timeout,
                on_error=self._on_error,
            )
            for response_id in RESPONSE_IDS
            if response_id not in shared
        }
        #: the stack each response identifier is read with
        self.stacks = {
            rid: shared[rid].stack if rid in shared else self._own[rid] for rid in RESPONSE_IDS
        }

    def _on_error(self, error: Exception) -> None:
        # Called on isotp's threads: count only; the request ends without that ECU's answer.
        self.errors[type(error).__name__] += 1
        log.debug("isotp: %s", error)

    def open(self) -> None:
        """Start the ISO-TP stacks (those of shared channels are their channels')."""
        for stack in self._own.values():
            stack.start()

    def close(self) -> None:
        """Stop the ISO-TP stacks of its own."""
        for stack in self._own.values():
            stack.stop()

    def ask(self, mode: int, pid: int) -> dict[int, bytes]:
        """Every ECU's answer to one functional request (see :meth:`ObdClient.ask`)."""
        stacks = self.stacks
        frame = can.Message(
            arbitration_id=FUNCTIONAL_ID,
            data=bytes((2, mode, pid)).ljust(8, b"\xaa"),  # a single frame of 2 bytes, padded
            is_extended_id=False,
        )
        with contextlib.ExitStack() as held:
            held.enter_context(self._lock)
            for lock in self._shared_locks:  # always in the same order: no deadlock
                held.enter_context(lock)
            for stack in stacks.values():  # late answers to an earlier request
                while stack.recv() is not None:
                    pass
            expected, whole = self._expected(mode, pid)
            self._limit()
            self._send(frame)
            sent = time.monotonic()
            window_end = sent + min(ANSWER_WINDOW, self.timeout)
            deadline = sent + self.timeout
            answers: dict[int, bytes] = {}
            pending: set[int] = set()  # ECUs that said "response pending"
            while True:
                for response_id, stack in stacks.items():
                    while (data := stack.recv()) is not None:
                        answer = bytes(data)
                        if is_response_pending(answer, mode):
                            pending.add(response_id)
                        elif not (
                            names_another_service(answer, mode)
                            or _answers_another_request(answer, mode, pid)
                        ):
                            answers.setdefault(response_id, answer)
                now = time.monotonic()
                if now >= deadline:
                    break
                if (
                    answers
                    and pending <= answers.keys()
                    and not any(stack.is_rx_active() for stack in stacks.values())
                ):
                    if expected is not None and expected <= answers.keys():
                        break
                    if expected is None and not whole and now >= window_end:
                        break
                time.sleep(_POLL)
        self.missing += len(((expected or set()) | pending) - answers.keys())
        if not answers:
            raise DiagnosticTimeout(f"no ECU answered within {self.timeout:g} s")
        self.responders.update(answers)
        return answers

    def _expected(self, mode: int, pid: int) -> tuple[set[int] | None, bool]:
        """The ECUs whose answers end the wait (None: not known), and whether to wait the
        whole timeout when not known (see the module docstring)."""
        discovery = mode == 0x01 and pid % 0x20 == 0
        if discovery or self.discovered is None:
            return None, discovery or mode == 0x09
        if mode == 0x01:
            return {rid for rid, pids in self.discovered.items() if pid in pids} or None, False
        return set(self.discovered), True

    def supported_pids(self) -> dict[int, set[int]]:
        """As :meth:`ObdClient.supported_pids`; also what later requests wait for."""
        found = super().supported_pids()
        self.discovered = found
        return found


def _answers_another_request(answer: bytes, mode: int, pid: int) -> bool:
    """Whether ``answer`` is a positive answer to another mode or PID than asked (late, to an
    earlier request): on the functional path no answer to this one."""
    if len(answer) < 2 or answer[0] == _NEGATIVE:
        return False
    return answer[0] != mode + _POSITIVE or answer[1] != pid


def parse_supported(base: int, data: bytes) -> set[int]:
    """The PIDs set in a 4-byte "PIDs supported [base+1 - base+0x20]" bitmap."""
    if len(data) < 4:
        raise DiagnosticError(f"supported-PID answer of {len(data)} bytes, expected 4")
    bits = int.from_bytes(data[:4], "big")
    return {base + i + 1 for i in range(32) if bits >> (31 - i) & 1}


def parse_vin(data: bytes) -> str:
    """The VIN from a mode 09 PID 02 answer: a count of data items (1), then 17 ASCII
    characters (some ECUs pad with zeros in front)."""
    text = (data[1:] if data[:1] == b"\x01" else data).strip(b"\0 ")
    if not text:
        raise DiagnosticError("empty VIN")
    if not (text.isascii() and text.decode("ascii").isprintable()):
        raise DiagnosticError(f"VIN of bytes that are not printable ASCII: {text.hex()}")
    return text.decode("ascii")
