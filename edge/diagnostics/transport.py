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
import time
from collections.abc import Callable
from typing import Any

import can
import isotp
import udsoncan
from udsoncan.connections import PythonIsoTpConnection
from udsoncan.Response import Response

from edge.errors import TelemetryError

__all__ = [
    "RESPONSE_PENDING",
    "DiagnosticError",
    "DiagnosticTimeout",
    "IsoTpChannel",
    "NegativeResponse",
    "TransportError",
    "is_response_pending",
    "isotp_stack",
    "names_another_service",
    "nrc_name",
]

log = logging.getLogger(__name__)

_NEGATIVE = 0x7F
#: ISO 14229-1 / ISO 15765-4 NRC "requestCorrectlyReceived-ResponsePending": wait, the answer
#: comes later.
RESPONSE_PENDING = 0x78


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
    """The ISO 14229 name of a negative response code (udsoncan's table; a code it does not
    know is named by its number). 0x00 is ISO 14229-1's "positiveResponse", reserved and never
    a negative response code: it is named so."""
    if code == 0x00:
        return "0x00 (not a negative response code)"
    name: str = Response.Code.get_name(code)
    return name


def is_response_pending(answer: bytes, service: int) -> bool:
    """Whether ``answer`` to a request of ``service`` is "response pending" (``7F service 78``):
    not the answer, which comes later."""
    return tuple(answer[:3]) == (_NEGATIVE, service, RESPONSE_PENDING)


def names_another_service(answer: bytes, service: int) -> bool:
    """Whether ``answer`` is a negative response (``7F``) naming another service than
    ``service``: no answer to a request of ``service`` (a late answer to another request)."""
    return len(answer) >= 2 and answer[0] == _NEGATIVE and answer[1] != service


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


def _no_answer(wait: float, pending: bool) -> str:
    return f"no answer within {wait:g} s" + (" (only 'response pending')" if pending else "")


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
        the caller checks). Raises DiagnosticTimeout or TransportError.

        "Response pending" (``7F <service> 78``) and a negative response naming another service
        are not the answer: the wait goes on for it, never past ``timeout`` (the channel's by
        default), which bounds the whole request as udsoncan's ``request_timeout`` bounds a UDS
        one. J1979's P2*CAN after a 0x78 is 5 s: an ECU that needs it needs that ``timeout``.
        "Response pending" and nothing after it is a DiagnosticTimeout."""
        wait = self.timeout if timeout is None else timeout
        service = payload[0] if payload else -1  # no service: every 7F names another
        pending = False
        with self._lock:
            self.connection.empty_rxqueue()
            try:
                self.connection.send(payload)
                deadline = time.monotonic() + wait
                while (remaining := deadline - time.monotonic()) > 0:
                    frame: Any = self.connection.wait_frame(timeout=remaining, exception=True)
                    answer = bytes(frame)
                    if is_response_pending(answer, service):
                        pending = True
                    elif not names_another_service(answer, service):
                        return answer
            except udsoncan.exceptions.TimeoutException as exc:
                raise DiagnosticTimeout(_no_answer(wait, pending)) from exc
            except isotp.IsoTpError as exc:
                raise TransportError(f"ISO-TP: {type(exc).__name__}: {exc}") from exc
            except can.CanError as exc:
                raise TransportError(f"bus: {exc}") from exc
        raise DiagnosticTimeout(_no_answer(wait, pending))

    def lock(self) -> threading.Lock:
        """The lock that keeps one request at a time on this channel (udsoncan's Client)."""
        return self._lock
