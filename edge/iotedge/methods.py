"""Direct methods of the module, invoked from the cloud
(``az iot hub invoke-module-method --method-name getStats ...``).

=============  ======================  =====================================================
method         payload                 answer (status 200)
=============  ======================  =====================================================
``getStats``   none or ``{}``          the counters, as in the reported properties' ``stats``
``flush``      none, ``{}`` or         closes the open batch into the spool and wakes the
               ``{"wait": seconds}``   forwarder; with ``wait`` (0-60), waits until the spool
                                       is empty: ``{"flushed": true, "spoolDepth": n,
                                       "drained": bool}``
``getConfig``  none or ``{}``          the configuration in effect: source, desired version,
                                       SHA-256 and the settings, secrets replaced by ``***``
``readDtcs``   none, ``{}``,           reads the DTCs of the UDS ECUs named (default: every
               ``{"ecus": [...]}``,    configured one) now: ``{"ECU": [{"dtc": "P0301",
               ``"clear": true``       "status": 8}, ...]}``; with ``clear`` (and
                                       ``allow_clear`` on the bus) clears them first (logged)
``readDid``    ``{"ecu": "BMS",        reads a data identifier now: ``{"ecu", "did", "hex"}``
               "did": "F190"}``        (and ``name``, ``value``, ``text`` when configured)
``getVin``     none, ``{}`` or         the VIN read at start, or now with ``refresh``:
               ``{"refresh": true}``   ``{"vin": "...", "bus": "..."}``
``getSignals`` none, ``{}`` or         the last-known state: latest value, unit, choice, bus
               ``{"signals": [globs]}``  and frame time of each signal matching the globs on
                                       ``Message.Signal`` or mapped VSS paths (default all;
                                       at most 500), with or without campaigns
``capture``    ``{"campaign": name}``  triggers a condition campaign now, or an ad hoc
               or ``{"signals": [...], capture of the signals the campaigns keep history of;
               "before": s,            ``{"campaign", "trigger", "end"}`` (frame times); the
               "after": s}``           capture is spooled when frame time passes ``end``
``listCampaigns`` none or ``{}``       state, settings and counters per campaign, and the
                                       history's frames, bytes and overflow
=============  ======================  =====================================================

``getSignals`` answers in every configuration (the processing stage keeps the last-known state
of every decoded message; 409 only before the pipeline runs). ``capture`` and
``listCampaigns`` (issue 11) answer 409 when no campaign is configured and 400 for an unknown
campaign.

Diagnostics methods answer 409 when no bus enables diagnostics, 400 for an unknown ECU or a
malformed DID, 403 for ``clear`` where ``allow_clear`` is off, 408 when the ECU did not answer
in time, 422 with ``nrc`` and ``nrcName`` for a negative response, 409 for a transport failure
(a lost flow control, the pause after a bus error).

A payload of the wrong shape is answered with status 400 and ``{"error": "<field>: <why>"}``,
an unknown method with 404 (and the list of known ones), a method the module cannot run now
(``flush`` before any configuration) with 409, an unexpected failure with 500.

:class:`DirectMethods` is plain Python: ``handle(name, payload) -> (status, payload)``, so every
answer can be tested without the SDK. :class:`MethodServer` connects it to the SDK: the SDK's
handler (``client.on_method_request_received``) only queues the request; the server's own
thread runs the method and sends the response, so a ``flush`` that waits never holds the SDK's
handler threads. IoT Hub only delivers JSON payloads; the SDK drops a request whose payload is not
JSON before any handler sees it (the caller then gets IoT Hub's timeout).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from edge.config.table import Table
from edge.errors import ConfigError, TelemetryError
from edge.iotedge.twin import ConfigOrigin, Refusal, iso_time

__all__ = ["METHOD_NAMES", "DirectMethods", "MethodServer", "ModuleApi", "config_answer", "redact"]

log = logging.getLogger(__name__)

METHOD_NAMES = (
    "getStats",
    "flush",
    "getConfig",
    "readDtcs",
    "readDid",
    "getVin",
    "getSignals",
    "capture",
    "listCampaigns",
)

#: Most signals one ``getSignals`` answers with (a method response is limited to 128 KB).
MAX_SIGNALS = 500

#: Longest ``wait`` a flush accepts (IoT Hub's method timeout defaults to 30 s, max 300 s).
MAX_FLUSH_WAIT = 60.0

#: Option names whose values are never echoed back.
SECRET_KEYS = frozenset({"password", "connection_string", "shared_access_key", "sas_token"})

Result = tuple[int, Any]


class ModuleApi(Protocol):
    """What the methods need from the running module."""

    def summary(self) -> dict[str, Any]:
        """The counters (JSON)."""
        ...

    def flush(self) -> None:
        """Close the open batch into the spool and wake the forwarder."""
        ...

    def spool_depth(self) -> int:
        """Payloads waiting in the spool."""
        ...

    def config_info(self) -> dict[str, Any]:
        """The configuration in effect (JSON; may hold secrets, which :func:`redact` hides)."""
        ...

    def diagnostics(self) -> Any:
        """The running :class:`edge.diagnostics.service.Diagnostics`, None when every bus is
        listen-only."""
        ...

    def campaigns(self) -> Any:
        """The running :class:`edge.campaigns.engine.CampaignEngine`, None without campaigns."""
        ...

    def signals(self, globs: Sequence[str]) -> dict[str, Any] | None:
        """The last-known state of the signals matching ``globs``
        (:meth:`edge.processing.processor.Processor.signals`), None before the pipeline runs."""
        ...


def config_answer(origin: ConfigOrigin | None, refusal: Refusal | None) -> dict[str, Any]:
    """The configuration in effect (``origin``), where it came from, and the last refused
    desired version: what :meth:`ModuleApi.config_info` answers (the document may hold
    secrets; ``getConfig`` redacts them)."""
    return {
        "source": origin.source if origin else None,
        "desiredVersion": origin.desired_version if origin else None,
        "sha256": origin.sha256 if origin else None,
        "appliedAt": iso_time(origin.applied_at) if origin else None,
        "refused": (
            {
                "desiredVersion": refusal.desired_version,
                "field": refusal.field,
                "reason": refusal.reason,
            }
            if refusal
            else None
        ),
        "config": dict(origin.document) if origin else None,
    }


def redact(value: Any) -> Any:
    """``value`` with the values of secret keys (passwords, connection strings) replaced."""
    if isinstance(value, Mapping):
        return {
            k: "***" if str(k).lower() in SECRET_KEYS and v is not None else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class _BadRequest(Exception):
    pass


class DirectMethods:
    """The module's direct methods as plain functions returning ``(status, payload)``."""

    def __init__(
        self,
        api: ModuleApi,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._sleep = sleep
        self._monotonic = monotonic
        self._handlers: dict[str, Callable[[Any], Result]] = {
            "getStats": self.get_stats,
            "flush": self.flush,
            "getConfig": self.get_config,
            "readDtcs": self.read_dtcs,
            "readDid": self.read_did,
            "getVin": self.get_vin,
            "getSignals": self.get_signals,
            "capture": self.capture,
            "listCampaigns": self.list_campaigns,
        }

    def handle(self, name: str, payload: Any) -> Result:
        """Run method ``name``; never raises."""
        handler = self._handlers.get(name)
        if handler is None:
            return 404, {"error": f"unknown method {name!r}", "methods": list(METHOD_NAMES)}
        try:
            return handler(payload)
        except _BadRequest as exc:
            return 400, {"error": str(exc)}
        except ConfigError as exc:
            return 400, {"error": str(exc)}
        except TelemetryError as exc:  # e.g. nothing to flush before the first configuration
            return 409, {"error": str(exc)}
        except Exception as exc:  # the answer must still go out
            log.exception("direct method %s failed", name)
            return 500, {"error": f"{type(exc).__name__}: {exc}"}

    def get_stats(self, payload: Any) -> Result:
        """``getStats``: the counters."""
        _no_options(payload)
        return 200, self._api.summary()

    def flush(self, payload: Any) -> Result:
        """``flush``: close the open batch and send now; optionally wait for the spool to empty."""
        options = _options(payload)
        wait = options.float("wait", 0.0, min=0.0, max=MAX_FLUSH_WAIT)
        options.finish()
        self._api.flush()
        depth = self._api.spool_depth()
        deadline = self._monotonic() + wait
        while depth > 0 and self._monotonic() < deadline:
            self._sleep(0.05)
            depth = self._api.spool_depth()
        return 200, {"flushed": True, "spoolDepth": depth, "drained": depth == 0}

    def get_config(self, payload: Any) -> Result:
        """``getConfig``: the configuration in effect, secrets hidden."""
        _no_options(payload)
        return 200, redact(self._api.config_info())

    def _diagnostics(self) -> Any:
        diagnostics = self._api.diagnostics()
        if diagnostics is None:
            raise TelemetryError("diagnostics are not enabled on any bus ([diagnostics])")
        return diagnostics

    def _diagnose(self, request: Callable[[], Any]) -> Result:
        """Run a diagnostic request, its failures as 4xx answers."""
        from edge.diagnostics.transport import (
            DiagnosticTimeout,
            NegativeResponse,
            TransportError,
        )

        try:
            return 200, request()
        except KeyError as exc:
            return 400, {"error": f"unknown ECU {exc.args[0]!r}"}
        except PermissionError as exc:
            return 403, {"error": str(exc)}
        except LookupError as exc:
            return 409, {"error": str(exc)}
        except DiagnosticTimeout as exc:
            return 408, {"error": str(exc)}
        except NegativeResponse as exc:
            return 422, {"error": str(exc), "nrc": exc.code, "nrcName": exc.name}
        except TransportError as exc:
            return 409, {"error": str(exc)}
        except TelemetryError as exc:  # an answer the ECU should not have given
            return 502, {"error": str(exc)}

    def read_dtcs(self, payload: Any) -> Result:
        """``readDtcs``: the DTCs of the ECUs named (default: all), read now; ``clear`` first
        clears them where the bus allows it."""
        options = _options(payload)
        ecus = options.str_list("ecus", None)
        clear = options.bool("clear", False)
        options.finish()
        diagnostics = self._diagnostics()

        def run() -> Any:
            names = list(ecus) if ecus is not None else diagnostics.ecu_names()
            if clear:
                for name in names:
                    log.warning("direct method readDtcs: clearing the DTCs of %s", name)
                    diagnostics.clear_dtcs(name)
            return diagnostics.read_dtcs(names)

        return self._diagnose(run)

    def read_did(self, payload: Any) -> Result:
        """``readDid``: one data identifier of one ECU, read now."""
        options = _options(payload)
        ecu = options.str("ecu")
        raw = options.raw("did")
        options.finish()
        did = _did(raw)
        diagnostics = self._diagnostics()
        return self._diagnose(lambda: diagnostics.read_did(ecu, did))

    def get_vin(self, payload: Any) -> Result:
        """``getVin``: the VIN (read at start, or now with ``refresh``)."""
        options = _options(payload)
        refresh = options.bool("refresh", False)
        options.finish()
        diagnostics = self._diagnostics()
        return self._diagnose(lambda: diagnostics.get_vin(refresh=refresh))

    def _campaigns(self) -> Any:
        engine = self._api.campaigns()
        if engine is None:
            raise TelemetryError("no campaign is configured ([[campaigns]] or config.campaigns)")
        return engine

    def get_signals(self, payload: Any) -> Result:
        """``getSignals``: latest value and time of the signals matching the globs."""
        options = _options(payload)
        globs = options.str_list("signals", ("*",))
        options.finish()
        found = self._api.signals(globs)
        if found is None:
            raise TelemetryError("the pipeline is not running yet")
        names = sorted(found)[:MAX_SIGNALS]
        return 200, {
            "signals": {name: found[name] for name in names},
            "truncated": len(found) > len(names),
        }

    def capture(self, payload: Any) -> Result:
        """``capture``: trigger a named campaign now, or an ad hoc capture of ``signals``."""
        options = _options(payload)
        name = options.str("campaign", None)
        globs = options.str_list("signals", None)
        before = options.float("before", 10.0, min=0.0, max=600.0)
        after = options.float("after", 10.0, min=0.0, max=600.0)
        options.finish()
        if (name is None) == (globs is None):
            raise _BadRequest("payload: give either campaign or signals")
        engine = self._campaigns()
        if name is not None:
            try:
                capture = engine.trigger(name)
            except KeyError:
                raise _BadRequest(f"payload.campaign: no campaign named {name!r}") from None
        else:
            capture = engine.capture(globs, before, after)
        return 200, {"campaign": capture.campaign, "trigger": capture.trigger, "end": capture.end}

    def list_campaigns(self, payload: Any) -> Result:
        """``listCampaigns``: state, settings and counters of every campaign."""
        _no_options(payload)
        engine = self._campaigns()
        return 200, {"campaigns": engine.describe(), "history": engine.ring_stats()}


def _did(value: Any) -> int:
    """A DID from a method payload: an integer, or hex text (``F190``, ``0xF190``)."""
    did: Any = value
    if isinstance(value, str):
        try:
            did = int(value, 16)
        except ValueError:
            raise _BadRequest(f"payload.did: expected hex digits, got {value!r}") from None
    if isinstance(did, bool) or not isinstance(did, int) or not 0 <= did <= 0xFFFF:
        raise _BadRequest(f"payload.did: expected a DID from 0 to 0xFFFF, got {value!r}")
    return did


def _options(payload: Any) -> Table:
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise _BadRequest(f"payload: expected an object or nothing, got {type(payload).__name__}")
    return Table(payload, "payload")


def _no_options(payload: Any) -> None:
    _options(payload).finish()


class MethodServer:
    """Answers the SDK's method requests on a thread of its own (see the module docstring)."""

    def __init__(self, methods: DirectMethods, *, max_pending: int = 32) -> None:
        self._methods = methods
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None

    def submit(self, client: Any, request: Any) -> None:
        """The SDK's ``on_method_request_received`` handler (bind ``client`` first): queue."""
        try:
            self._queue.put_nowait((client, request))
        except queue.Full:
            log.warning("direct method %s dropped: too many requests pending", request.name)

    def start(self) -> None:
        """Start answering."""
        if self._thread is not None:
            raise RuntimeError("method server already started")
        self._thread = threading.Thread(target=self._run, name="methods", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the request in progress."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return  # the thread is stuck in a request; it is a daemon
        self._thread.join(timeout)

    def _run(self) -> None:
        from azure.iot.device import MethodResponse

        while (item := self._queue.get()) is not None:
            client, request = item
            status, payload = self._methods.handle(request.name, request.payload)
            log.info("direct method %s: %d", request.name, status)
            try:
                client.send_method_response(MethodResponse(request.request_id, status, payload))
            except Exception as exc:
                log.warning(
                    "direct method %s: cannot send the response: %s: %s",
                    request.name,
                    type(exc).__name__,
                    exc,
                )
