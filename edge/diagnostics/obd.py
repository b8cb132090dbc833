"""OBD-II (SAE J1979) requests: mode 01 PIDs, supported-PID discovery, the VIN (mode 09 PID 02).

The answers of mode 01 are not decoded here: they are frames on the bus like any other, and
the bus's OBD-II database (e.g. the CSS Electronics OBD2 DBC bundled as ``edge.dbc``'s
``obd2_css.dbc``) turns them into signals with units in the ordinary pipeline. This module only
asks, checks that an answer came, and reads the two answers it needs itself (supported PIDs,
VIN).
"""

from __future__ import annotations

from edge.diagnostics.transport import DiagnosticError, IsoTpChannel, NegativeResponse

__all__ = ["ObdClient", "parse_supported", "parse_vin"]

_NEGATIVE = 0x7F
_POSITIVE = 0x40


class ObdClient:
    """J1979 requests over one ISO-TP channel."""

    def __init__(self, channel: IsoTpChannel) -> None:
        self.channel = channel

    def request(self, mode: int, pid: int) -> bytes:
        """The data bytes of the answer to ``mode``/``pid`` (after the echoed mode and PID).
        Raises NegativeResponse, DiagnosticTimeout, TransportError or DiagnosticError for an
        answer to something else."""
        answer = self.channel.request(bytes((mode, pid)))
        if len(answer) >= 3 and answer[0] == _NEGATIVE:
            raise NegativeResponse(answer[1], answer[2])
        if len(answer) < 2 or answer[0] != mode + _POSITIVE or answer[1] != pid:
            raise DiagnosticError(f"unexpected answer {answer[:8].hex()} to {mode:02x} {pid:02x}")
        return answer[2:]

    def supported_pids(self) -> set[int]:
        """Mode 01 PIDs the ECU says it supports (PIDs 0x00, 0x20, ... as long as the last bit
        of each says the next range exists)."""
        supported: set[int] = set()
        base = 0
        while base <= 0xE0:
            found = parse_supported(base, self.request(0x01, base))
            supported |= found
            if base + 0x20 not in found:
                break
            base += 0x20
        return supported

    def vin(self) -> str:
        """The VIN (mode 09 PID 02; a multi-frame answer)."""
        return parse_vin(self.request(0x09, 0x02))


def parse_supported(base: int, data: bytes) -> set[int]:
    """The PIDs set in a 4-byte "PIDs supported [base+1 - base+0x20]" bitmap."""
    if len(data) < 4:
        raise DiagnosticError(f"supported-PID answer of {len(data)} bytes, expected 4")
    bits = int.from_bytes(data[:4], "big")
    return {base + i + 1 for i in range(32) if bits >> (31 - i) & 1}


def parse_vin(data: bytes) -> str:
    """The VIN from a mode 09 PID 02 answer: a count of data items (1), then 17 ASCII
    characters (some ECUs pad with zeros in front)."""
    text = data[1:] if data[:1] == b"\x01" else data
    vin = text.decode("ascii", "replace").strip("\0 ")
    if not vin:
        raise DiagnosticError("empty VIN")
    return vin
