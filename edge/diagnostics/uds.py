"""UDS (ISO 14229) requests to one ECU through udsoncan's :class:`udsoncan.client.Client` over an
:class:`~edge.diagnostics.transport.IsoTpChannel`: ReadDTCInformation (0x19 0x02, DTCs by
status mask), ReadDataByIdentifier (0x22) and, only where allowed, ClearDiagnosticInformation
(0x14).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import isotp
import udsoncan
from udsoncan.client import Client

from edge.config.diagnostics import DidConfig, UdsEcuConfig
from edge.diagnostics.transport import (
    DiagnosticError,
    DiagnosticTimeout,
    IsoTpChannel,
    NegativeResponse,
    TransportError,
)

__all__ = ["UdsEcu", "did_text"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _RawDid(udsoncan.DidCodec):
    """A DID's bytes as they came (the configured kind turns them into text afterwards)."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        raise NotImplementedError("this module never writes a DID")

    def decode(self, payload: bytes) -> bytes:
        return bytes(payload)

    def __len__(self) -> int:
        raise udsoncan.DidCodec.ReadAllRemainingData


class UdsEcu:
    """One ECU's UDS client. Every method raises :class:`DiagnosticError` subclasses only."""

    def __init__(self, config: UdsEcuConfig, channel: IsoTpChannel) -> None:
        self.config = config
        self.channel = channel
        client_config: Any = dict(udsoncan.configs.default_client_config)
        client_config.update(
            request_timeout=channel.timeout,
            p2_timeout=channel.timeout,
            p2_star_timeout=max(channel.timeout, 2.0),
            data_identifiers={"default": _RawDid},
            # Answers with more DTC bytes than whole records still give the whole ones.
            tolerate_zero_padding=True,
            ignore_all_zero_dtc=True,
            use_server_timing=False,  # our timeout, whatever the session says
            logger_name=config.name,
        )
        self.client = Client(channel.connection, config=client_config)
        # udsoncan logs each request at INFO and each timeout or negative response at ERROR;
        # the schedule counts those and answers direct methods with them: keep only its bugs.
        self.client.logger.setLevel(logging.CRITICAL)

    def read_dtcs(self, status_mask: int | None = None) -> list[tuple[int, int]]:
        """``(dtc, status)`` of the DTCs whose status matches the mask (0x19 0x02)."""
        mask = self.config.dtc_status_mask if status_mask is None else status_mask
        response: Any = self._call(lambda: self.client.get_dtc_by_status_mask(mask))
        return [(d.id, d.status.get_byte_as_int()) for d in response.service_data.dtcs]

    def read_did(self, did: int) -> bytes:
        """The bytes of data identifier ``did`` (0x22)."""
        value = self._call(lambda: self.client.read_data_by_identifier_first(did))
        return bytes(value)

    def clear_dtcs(self, group: int = 0xFFFFFF) -> None:
        """ClearDiagnosticInformation (0x14) for ``group`` (all DTCs by default). Callers check
        that clearing is allowed; this logs it."""
        log.warning("clearing DTCs of %s (group %06X)", self.config.name, group)
        self._call(lambda: self.client.clear_dtc(group))

    def _call(self, request: Callable[[], _T]) -> _T:
        with self.channel.lock():
            try:
                return request()
            except udsoncan.exceptions.NegativeResponseException as exc:
                service = exc.response.service.request_id() if exc.response.service else 0
                raise NegativeResponse(service, exc.response.code or 0) from exc
            except udsoncan.exceptions.TimeoutException as exc:
                raise DiagnosticTimeout(f"{self.config.name}: no answer in time") from exc
            except (
                udsoncan.exceptions.InvalidResponseException,
                udsoncan.exceptions.UnexpectedResponseException,
            ) as exc:
                raise DiagnosticError(f"{self.config.name}: {exc}") from exc
            except isotp.IsoTpError as exc:
                raise TransportError(f"{self.config.name}: ISO-TP: {exc}") from exc


def did_text(did: DidConfig, data: bytes) -> tuple[int, str]:
    """``(value, text)`` of a DID as configured: ``ascii`` (value: length), ``uint`` (big-endian
    unsigned), ``hex``."""
    if did.kind == "ascii":
        return len(data), data.decode("ascii", "replace").strip("\0 ")
    if did.kind == "uint":
        value = int.from_bytes(data, "big")
        return value, str(value)
    return len(data), data.hex().upper()
