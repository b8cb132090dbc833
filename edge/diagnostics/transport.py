"""ISO-TP channels to ECUs, and the exceptions every diagnostic request can end in.

A :class:`IsoTpChannel` is can-isotp's :class:`isotp.NotifierBasedCanStack` over the diagnostics'
own python-can bus (read through a ``can.Notifier``, so the stack never steals frames from other
listeners), wrapped in udsoncan's :class:`PythonIsoTpConnection`, which udsoncan's ``Client``
uses for UDS and :mod:`edge.diagnostics.obd` uses for plain J1979 requests. Exceptions of
those libraries are translated here into :class:`DiagnosticError` and its subclasses.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

import can
import isotp
import udsoncan
from udsoncan.connections import PythonIsoTpConnection
from udsoncan.Response import Response

from edge.errors import TelemetryError

__all__ = [
    "DiagnosticError",
    "DiagnosticTimeout",
    "IsoTpChannel",
    "NegativeResponse",
    "TransportError",
    "isotp_stack",
    "nrc_name",
]

log = logging.getLogger(__name__)


class DiagnosticError(TelemetryError):
    """A diagnostic request that did not give an answer."""


class DiagnosticTimeout(DiagnosticError):
    """No (complete) answer in time: a silent ECU, or a multi-frame answer cut short."""


class NegativeResponse(DiagnosticError):
    """The ECU answered 0x7F: ``code`` is the negative response code, ``name`` its ISO name."""

    def __init__(self, service: int, code: int) -> None:
        self.service = service
        self.code = code
        self.name = nrc_name(code)
        super().__init__(f"negative response to service {service:#04x}: {self.name} ({code:#04x})")


class TransportError(DiagnosticError):
    """ISO-TP or the bus failed (a lost flow control, a send error)."""


def nrc_name(code: int) -> str:
    """The ISO 14229 name of a negative response code (udsoncan's table)."""
    name: str = Response.Code.get_name(code)
    return name


def isotp_stack(
    bus: can.BusABC,
    notifier: can.Notifier,
    request_id: int,
    response_id: int,
    *,
    extended_id: bool = False,
    timeout: float = 1.0,
    on_error: Callable[[Exception], None],
) -> isotp.NotifierBasedCanStack:
    """can-isotp's stack for one physically addressed pair (we send on ``request_id``, the ECU
    answers on ``response_id``), read through ``notifier``, with our timing and padding."""
    mode = isotp.AddressingMode.Normal_29bits if extended_id else isotp.AddressingMode.Normal_11bits
    params = {
        # A lost frame must end a request within our timeout, not isotp's default 1 s each.
        "rx_flowcontrol_timeout": round(timeout * 1000),
        "rx_consecutive_frame_timeout": round(timeout * 1000),
        "blocking_send": True,
        "tx_padding": 0xAA,  # many ECUs ignore frames shorter than 8 bytes
    }
    return isotp.NotifierBasedCanStack(
        bus,
        notifier,
        address=isotp.Address(mode, txid=request_id, rxid=response_id),
        error_handler=on_error,
        params=params,
    )


class _LimitedConnection(PythonIsoTpConnection):
    """udsoncan's ISO-TP connection, every request waiting for the bus's rate limit first."""

    def __init__(self, stack: isotp.TransportLayer, limit: Callable[[], None], name: str) -> None:
        super().__init__(stack, name=name)
        self._limit = limit

    def specific_send(self, payload: bytes, timeout: float | None = None) -> None:
        self._limit()
        super().specific_send(payload, timeout)


class IsoTpChannel:
    """One physically addressed ISO-TP link (request id -> response id) on a shared bus."""

    def __init__(
        self,
        bus: can.BusABC,
        notifier: can.Notifier,
        request_id: int,
        response_id: int,
        *,
        extended_id: bool = False,
        timeout: float = 1.0,
        limit: Callable[[], None] = lambda: None,
    ) -> None:
        self.request_id = request_id
        self.response_id = response_id
        self.extended_id = extended_id
        self.timeout = timeout
        #: ISO-TP errors by class name (lost flow control, consecutive-frame timeouts, ...)
        self.errors: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.stack = isotp_stack(
            bus,
            notifier,
            request_id,
            response_id,
            extended_id=extended_id,
            timeout=timeout,
            on_error=self._on_error,
        )
        # Named under our logger: udsoncan logs every request at INFO and every timeout at
        # ERROR, which the schedule counts and reports itself (see docs/diagnostics.md).
        self.connection = _LimitedConnection(self.stack, limit, f"{__name__}.{request_id:X}")
        self.connection.logger.setLevel(logging.WARNING)

    def _on_error(self, error: Exception) -> None:
        # Called on isotp's thread: count only; the waiting request times out and reports it.
        self.errors[type(error).__name__] += 1
        log.debug("isotp: %s", error)

    def open(self) -> None:
        """Start the ISO-TP stack's thread."""
        self.connection.open()

    def close(self) -> None:
        """Stop the ISO-TP stack."""
        self.connection.close()

    def request(self, payload: bytes, timeout: float | None = None) -> bytes:
        """Send ``payload`` and return the ECU's answer (which may be a negative response:
        the caller checks). Raises DiagnosticTimeout or TransportError."""
        wait = self.timeout if timeout is None else timeout
        with self._lock:
            self.connection.empty_rxqueue()
            try:
                self.connection.send(payload)
                answer: Any = self.connection.wait_frame(timeout=wait, exception=True)
            except udsoncan.exceptions.TimeoutException as exc:
                raise DiagnosticTimeout(f"no answer within {wait:g} s") from exc
            except isotp.IsoTpError as exc:
                raise TransportError(f"ISO-TP: {type(exc).__name__}: {exc}") from exc
            except can.CanError as exc:
                raise TransportError(f"bus: {exc}") from exc
        return bytes(answer)

    def lock(self) -> threading.Lock:
        """The lock that keeps one request at a time on this channel (udsoncan's Client)."""
        return self._lock
