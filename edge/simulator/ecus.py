"""Simulated ECUs that answer diagnostic requests, for the demo and the tests: the demo vehicle's
engine ECU answers OBD-II (mode 01 PIDs and supported-PID bitmaps, mode 09 VIN), its battery and
transmission ECUs answer UDS (0x19 0x02 with a few stored DTCs, 0x22 DIDs, 0x14 clear) with
multi-frame ISO-TP answers (can-isotp, as the real side would), and a J1939 engine controller
broadcasts DM1 as TP.BAM and answers a VIN request. The transmission ECU also answers OBD-II
(vehicle speed, VIN), so that a functional request (0x7DF) gets two answers, each on the
ECU's own identifier; as J1979 asks, an ECU does not answer a functional request it has no
answer for.

Runtime modules never import this one. Faults can be injected for the negative-path tests:
silent ECUs, a negative response to a service, dropped flow-control frames, a missing BAM
packet, an ECU that reports another VIN.

Every frame the ECUs send is stamped with ``clock()`` when one is given: the demo drives on
simulated time, and answers stamped with the wall clock would look to the pipeline like the
vehicle's clock jumping ahead and back. The stamp reaches readers where the bus passes
timestamps on (python-can's virtual bus with ``preserve_timestamps=True``); a real interface
stamps frames itself (SocketCAN: the kernel, when they arrive).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import can
import isotp

__all__ = [
    "DEMO_VIN",
    "ENGINE_PIDS",
    "FUNCTIONAL_ID",
    "TRANSMISSION_PIDS",
    "EcuFaults",
    "SimulatedEcus",
    "UdsServer",
    "dm1_bytes",
]

log = logging.getLogger(__name__)

DEMO_VIN = "WDEMO00CANTELEM01"
FUNCTIONAL_ID = 0x7DF  # OBD-II functional requests (ISO 15765-4)
#: (request id, response id) of the demo vehicle's diagnostic ECUs.
OBD_ECM = (0x7E0, 0x7E8)
UDS_TCM = (0x7E1, 0x7E9)
UDS_BMS = (0x7E4, 0x7EC)
J1939_ENGINE = 0x00  # source address
_BAM_GAP = 0.05  # seconds between TP.DT packets (J1939-21: 50 to 200 ms)
_Answer = Callable[[bytes], bytes | None]


@dataclass
class EcuFaults:
    """Faults to inject (tests)."""

    silent: set[str] = field(default_factory=set)  # ECU names that never answer
    negative: dict[str, tuple[int, int]] = field(default_factory=dict)  # ECU -> (service, NRC)
    drop_flow_control: int = 0  # flow-control frames the ECUs lose, from now on
    skip_bam_packet: int | None = None  # TP.DT sequence number never sent
    vin: dict[str, str] = field(default_factory=dict)  # ECU -> the VIN it says (a swapped ECU)


class _EcuStack(isotp.NotifierBasedCanStack):
    """An ECU's ISO-TP stack: it sends through ``send`` (which stamps the frame), and can
    lose flow-control frames (a fault for the tests)."""

    def __init__(
        self, faults: EcuFaults, send: Callable[[can.Message], None], *args: Any, **kwargs: Any
    ) -> None:
        self._faults = faults
        super().__init__(*args, **kwargs)
        self.txfn = lambda frame: send(
            can.Message(
                arbitration_id=frame.arbitration_id,
                data=frame.data,
                is_extended_id=frame.is_extended_id,
                is_fd=frame.is_fd,
                bitrate_switch=frame.bitrate_switch,
            )
        )

    def _on_message_received(self, msg: can.Message) -> None:
        if (
            self._faults.drop_flow_control > 0
            and msg.arbitration_id == self.address.get_rx_arbitration_id()
            and msg.data
            and msg.data[0] >> 4 == 3
        ):
            self._faults.drop_flow_control -= 1
            return
        super()._on_message_received(msg)


class UdsServer:
    """The UDS side of one ECU: stored DTCs and DIDs."""

    def __init__(self, name: str, dtcs: Mapping[int, int], dids: Mapping[int, bytes]) -> None:
        self.name = name
        self.dtcs = dict(dtcs)  # 3-byte DTC -> status byte
        self.dids = dict(dids)
        self.clears = 0

    def answer(self, request: bytes) -> bytes:
        """The answer to one UDS request."""
        sid = request[0]
        if sid == 0x19 and len(request) >= 3 and request[1] == 0x02:
            mask = request[2]
            records = b"".join(
                code.to_bytes(3, "big") + bytes((status,))
                for code, status in sorted(self.dtcs.items())
                if status & mask
            )
            return bytes((0x59, 0x02, 0xFF)) + records
        if sid == 0x22 and len(request) >= 3:
            did = int.from_bytes(request[1:3], "big")
            if did not in self.dids:
                return bytes((0x7F, 0x22, 0x31))  # requestOutOfRange
            return bytes((0x62,)) + request[1:3] + self.dids[did]
        if sid == 0x14 and len(request) >= 4:
            self.dtcs.clear()
            self.clears += 1
            return bytes((0x54,))
        return bytes((0x7F, sid, 0x11))  # serviceNotSupported


#: Mode 01 PIDs each OBD-II ECU supports (0x20: the next range exists).
ENGINE_PIDS = frozenset({0x05, 0x0C, 0x0D, 0x11, 0x2F, 0x20})
TRANSMISSION_PIDS = frozenset({0x0D})


def _obd_answer(
    request: bytes, values: Mapping[str, float], vin: str, supported: frozenset[int] = ENGINE_PIDS
) -> bytes | None:
    """An OBD-II ECU's answer to a request (None: not supported: no answer, as J1979 ECUs do
    for PIDs they lack); the engine ECU's unless told which PIDs ``supported``."""
    if len(request) < 2:
        return None
    mode, pid = request[0], request[1]
    if mode == 0x09 and pid == 0x02:
        return bytes((0x49, 0x02, 0x01)) + vin.encode("ascii")
    if mode != 0x01:
        return bytes((0x7F, mode, 0x11))
    if pid in (0x00, 0x20) and (pid == 0x00 or pid in supported):
        bits = sum(1 << (31 - (p - pid - 1)) for p in supported if pid < p <= pid + 0x20)
        return bytes((0x41, pid)) + bits.to_bytes(4, "big")
    if pid not in supported:
        return None
    rpm = max(0.0, values.get("engine_speed", 800.0))
    data = {
        0x05: bytes((round(values.get("coolant", 85.0)) + 40,)),
        0x0C: round(rpm * 4).to_bytes(2, "big"),
        0x0D: bytes((min(255, round(values.get("speed", 0.0))),)),
        0x11: bytes((min(255, round(values.get("throttle", 10.0) * 2.55)),)),
        0x2F: bytes((min(255, round(values.get("fuel", 60.0) * 2.55)),)),
    }.get(pid)
    return None if data is None else bytes((0x41, pid)) + data


class SimulatedEcus:
    """The demo vehicle's diagnostic ECUs on ``bus`` (see the module docstring); ``start``,
    then ``stop``. ``values`` gives the live values the OBD PIDs report; ``clock``, when
    given, the time every frame they send is stamped with (see the module docstring)."""

    def __init__(
        self,
        bus: can.BusABC,
        *,
        values: Callable[[], Mapping[str, float]] | None = None,
        vin: str = DEMO_VIN,
        faults: EcuFaults | None = None,
        dm1_period: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.vin = vin
        self.faults = faults or EcuFaults()
        self._values = values or (lambda: {})
        self.dm1_period = dm1_period
        self.uds = {
            "TCM": UdsServer(
                "TCM",
                {0x070000: 0x08, 0xC10000: 0x28},  # P0700 confirmed, U0100 failed since clear
                {0xF190: vin.encode(), 0xF195: b"TCM-SW-04.12"},
            ),
            "BMS": UdsServer(
                "BMS",
                {0x0A8000: 0x2F},  # P0A80: replace hybrid battery pack
                {0xF190: vin.encode(), 0xF195: b"BMS-SW-2.3.0", 0xF18C: b"SN0012345678"},
            ),
        }
        #: J1939 DM1 active DTCs: (spn, fmi, occurrences)
        self.dm1: list[tuple[int, int, int]] = [(190, 2, 3), (110, 16, 1)]
        self.requests: dict[str, int] = {"OBD": 0, "TCM": 0, "BMS": 0, "J1939": 0}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._notifier: can.Notifier | None = None
        self._stacks: list[isotp.TransportLayer] = []
        self._send_lock = threading.Lock()
        self._functional: list[tuple[str, isotp.TransportLayer, _Answer]] = []

    def start(self) -> None:
        """Start answering (sets ``bus``'s filters to the requests the ECUs answer)."""
        filters: list[Any] = [
            {"can_id": request, "can_mask": 0x7FF, "extended": False}
            for request, _ in (OBD_ECM, UDS_TCM, UDS_BMS)
        ]
        filters.append({"can_id": FUNCTIONAL_ID, "can_mask": 0x7FF, "extended": False})
        filters.append({"can_id": 0xEA0000, "can_mask": 0x3FF0000, "extended": True})  # requests
        self.bus.set_filters(filters)
        self._notifier = can.Notifier(self.bus, [self._on_j1939], timeout=0.1)
        ecus: list[tuple[str, tuple[int, int], Callable[[bytes], bytes | None]]] = [
            ("OBD", OBD_ECM, lambda r: _obd_answer(r, self._values(), self._vin_of("OBD"))),
            ("TCM", UDS_TCM, self._tcm_answer),
            ("BMS", UDS_BMS, self.uds["BMS"].answer),
        ]
        for name, (request_id, response_id), answer in ecus:
            stack = _EcuStack(
                self.faults,
                self.send,
                self.bus,
                self._notifier,
                address=isotp.Address(
                    isotp.AddressingMode.Normal_11bits, txid=response_id, rxid=request_id
                ),
                params={"tx_padding": 0xAA, "blocking_send": False},
                error_handler=lambda e: log.debug("simulated ECU isotp: %s", e),
            )
            stack.start()
            self._stacks.append(stack)
            if name in ("OBD", "TCM"):
                self._functional.append((name, stack, answer))
            self._thread(f"ecu-{name}", self._serve, name, stack, answer)
        self._notifier.add_listener(self._on_functional)
        self._thread("ecu-dm1", self._broadcast_dm1)

    def stop(self) -> None:
        """Stop answering."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for stack in self._stacks:
            stack.stop()
        if self._notifier is not None:
            self._notifier.stop()

    def __enter__(self) -> SimulatedEcus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _vin_of(self, ecu: str) -> str:
        return self.faults.vin.get(ecu, self.vin)

    def _tcm_answer(self, request: bytes) -> bytes | None:
        if request[:1] in (b"\x01", b"\x09"):  # OBD-II modes: UDS has no such services
            return _obd_answer(request, self._values(), self._vin_of("TCM"), TRANSMISSION_PIDS)
        return self.uds["TCM"].answer(request)

    def _serve(self, name: str, stack: isotp.TransportLayer, answer: _Answer) -> None:
        while not self._stop.is_set():
            request = stack.recv(block=True, timeout=0.1)
            if request is not None:
                self._respond(name, stack, answer, bytes(request), functional=False)

    def _on_functional(self, msg: can.Message) -> None:
        """A functional OBD-II request (a single frame to 0x7DF): each OBD ECU answers it on
        its own identifier (the notifier's thread; ``send`` only queues the answer)."""
        if msg.arbitration_id != FUNCTIONAL_ID or msg.is_extended_id or not msg.data:
            return
        length = msg.data[0]
        if length >> 4 != 0 or not 1 <= length <= 7:  # ISO 15765-4: single frames only
            return
        request = bytes(msg.data[1 : 1 + length])
        for name, stack, answer in self._functional:
            self._respond(name, stack, answer, request, functional=True)

    def _respond(
        self,
        name: str,
        stack: isotp.TransportLayer,
        answer: _Answer,
        request: bytes,
        *,
        functional: bool,
    ) -> None:
        self.requests[name] += 1
        if name in self.faults.silent:
            return
        negative = self.faults.negative.get(name)
        if negative is not None and request[0] == negative[0]:
            stack.send(bytes((0x7F, negative[0], negative[1])))
            return
        reply = answer(request)
        if reply is None or (functional and reply[0] == 0x7F):
            return  # J1979: no negative answer to a functional request
        stack.send(reply)

    # -- J1939 ------------------------------------------------------------------------------------

    def _broadcast_dm1(self) -> None:
        while not self._stop.wait(self.dm1_period):
            if "J1939" in self.faults.silent:
                continue
            self.send_j1939(0xFECA, dm1_bytes(self.dm1))

    def _on_j1939(self, msg: can.Message) -> None:
        # A Request (PGN 59904) for the VIN (PGN 65260), to us or to all.
        if not msg.is_extended_id or (msg.arbitration_id >> 16) & 0xFF != 0xEA:
            return
        if (msg.arbitration_id >> 8) & 0xFF not in (J1939_ENGINE, 0xFF):
            return
        if bytes(msg.data[:3]) == (0xFEEC).to_bytes(3, "little"):
            self.requests["J1939"] += 1
            if "J1939" not in self.faults.silent:
                threading.Thread(
                    target=self.send_j1939, args=(0xFEEC, self.vin.encode() + b"*"), daemon=True
                ).start()

    def send_j1939(self, pgn: int, data: bytes) -> None:
        """Broadcast ``pgn`` from the engine controller: one frame, or TP.BAM when longer."""
        with self._send_lock:
            if len(data) <= 8:
                self._send(_j1939_id(6, pgn, 0xFF), data.ljust(8, b"\xff"))
                return
            packets = (len(data) + 6) // 7
            announce = (
                bytes((32,))
                + len(data).to_bytes(2, "little")
                + bytes((packets, 0xFF))
                + pgn.to_bytes(3, "little")
            )
            self._send(_j1939_id(7, 0xEC00, 0xFF), announce)
            for seq in range(1, packets + 1):
                time.sleep(_BAM_GAP)
                if seq == self.faults.skip_bam_packet:
                    continue
                chunk = data[(seq - 1) * 7 : seq * 7].ljust(7, b"\xff")
                self._send(_j1939_id(7, 0xEB00, 0xFF), bytes((seq,)) + chunk)

    def _send(self, can_id: int, data: bytes) -> None:
        try:
            self.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))
        except can.CanError as exc:
            log.debug("simulated ECU send failed: %s", exc)

    def send(self, frame: can.Message) -> None:
        """Send ``frame`` as one of the ECUs, stamped with ``clock()`` when there is a clock."""
        if self.clock is not None:
            frame.timestamp = self.clock()
        self.bus.send(frame)


def _j1939_id(priority: int, pgn: int, destination: int) -> int:
    pf = (pgn >> 8) & 0xFF
    ps = destination if pf < 240 else pgn & 0xFF
    return (priority << 26) | (pf << 16) | (ps << 8) | J1939_ENGINE


def dm1_bytes(dtcs: list[tuple[int, int, int]]) -> bytes:
    """A DM1 for ``(spn, fmi, occurrences)`` DTCs (lamps: amber warning on when any)."""
    lamps = bytes((0x04 if dtcs else 0x00, 0xFF))
    if not dtcs:
        return lamps + bytes(4) + b"\xff\xff"
    body = b"".join(
        bytes((spn & 0xFF, spn >> 8 & 0xFF, (spn >> 11 & 0xE0) | fmi, count & 0x7F))
        for spn, fmi, count in dtcs
    )
    return lamps + body
