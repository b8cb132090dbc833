"""The forwarder: one thread that moves payloads from the spool to the uplink, oldest first.

The loop takes the oldest pending payload, sends it, and acks it in the spool only after
:meth:`Uplink.send` returned (the destination confirmed it): delivery is at-least-once and in
order. Nothing is queued in memory; during an outage the backlog is the spool and the forwarder
holds at most the one payload it is trying.

Failures:

* :class:`TransientUplinkError` is retried with tenacity, exponential backoff with full jitter
  (a random wait in ``[0, min(backoff_max, backoff_initial * 2**n)]``), forever: the spool bounds
  what waits. Each attempt re-reads the head of the spool, so a payload that the spool dropped
  meanwhile (cap, TTL) is not sent after all.
* :class:`RejectedPayloadError` (a :class:`PermanentUplinkError`): the destination refused
  *this* payload (too large, unroutable). It is moved to the spool's dead-letter table, kept for
  inspection, and the stream goes on: one poisoned payload never blocks the ones behind it.
* Any other :class:`PermanentUplinkError` means the uplink accepts nothing (credentials or TLS
  files refused, no IoT Edge environment): retrying soon will not help, and dropping data will
  not either. It is counted and logged distinctly, the backlog stays in the spool, and the same
  payload is tried again every ``backoff_max`` seconds (a renewed certificate or a fixed twin
  setting then resumes delivery without a restart).
* A spool that cannot delete a sent payload (disk full: a delete needs room in the WAL) does
  not stop the stream: the forwarder remembers what it sent, goes on with the next payload, and
  deletes the sent ones once the spool can write again (after a restart they are sent once more,
  which at-least-once allows).
* Anything else (a bug in an uplink, a SpoolError) is logged with its traceback, counted in
  ``last_error`` and retried after ``backoff_max``; the thread never dies of it.

:meth:`Forwarder.stop` interrupts a backoff wait at once; a send in progress ends within
``send_timeout``, which uplinks honour. The forwarder does not close the uplink or the spool:
whoever created them does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import tenacity

from edge.clock import Clock, SystemClock
from edge.delivery.spool import Spool
from edge.delivery.uplinks.base import Uplink
from edge.errors import (
    PermanentUplinkError,
    RejectedPayloadError,
    SpoolError,
    TransientUplinkError,
    scrub_secrets,
)

__all__ = ["Forwarder", "ForwarderStats"]

_log = logging.getLogger(__name__)

#: How often an idle forwarder looks at the spool without being woken (TTL, missed wake()).
_IDLE_POLL = 1.0

#: Longest ``last_error`` kept, so a verbose error cannot bloat metrics.
_MAX_ERROR_LENGTH = 300


@dataclass(frozen=True, slots=True)
class ForwarderStats:
    """Counters of a forwarder, for metrics and health."""

    #: Payloads confirmed by the uplink and acked in the spool.
    sent: int
    #: Backoff waits taken (one per failed attempt that is retried).
    retries: int
    #: TransientUplinkError raised by the uplink.
    transient_errors: int
    #: PermanentUplinkError raised by the uplink (see the module docstring for dead letters).
    permanent_errors: int
    #: Wall-clock time of the last confirmed send; None before the first.
    last_success_time: float | None
    #: ``"ExceptionType: message"`` of the last failure; None before the first.
    last_error: str | None


class _Stopped(Exception):
    """Raised out of a backoff wait when the forwarder is stopped."""


class Forwarder:
    """Sends spooled payloads through an uplink in its own thread. See the module docstring."""

    def __init__(
        self,
        spool: Spool,
        uplink: Uplink,
        *,
        send_timeout: float = 30.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        """Forward from ``spool`` to ``uplink``. ``send_timeout`` bounds each send (seconds);
        retry waits grow from ``backoff_initial`` to at most ``backoff_max`` seconds."""
        if send_timeout <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need send_timeout > 0 and 0 < backoff_initial <= backoff_max")
        self._spool = spool
        self._uplink = uplink
        self._send_timeout = send_timeout
        self._backoff_max = backoff_max
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sent = 0
        self._retries = 0
        self._transient = 0
        self._permanent = 0
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._offline = False  # log an outage once when it starts and once when it ends
        #: Stream, then seqs sent (or refused: with the reason) whose delete the spool refused.
        self._undeleted: tuple[str, list[tuple[int, str | None]]] | None = None
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientUplinkError),
            wait=tenacity.wait_random_exponential(multiplier=backoff_initial, max=backoff_max),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def start(self) -> None:
        """Start the forwarding thread."""
        if self._thread is not None:
            raise RuntimeError("forwarder already started")
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; True if it ended within ``timeout`` seconds.

        A backoff wait ends at once; a send in progress is not interrupted (it ends within
        ``send_timeout``) and its payload stays in the spool unless it was confirmed.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wake(self) -> None:
        """Look at the spool now (call after an append) instead of at the next idle poll."""
        self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait until the spool has nothing pending; False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        while self._spool.stats().depth > 0:
            self.wake()
            if time.monotonic() >= deadline or self._stop.wait(0.01):
                return self._spool.stats().depth == 0
        return True

    def stats(self) -> ForwarderStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return ForwarderStats(
                sent=self._sent,
                retries=self._retries,
                transient_errors=self._transient,
                permanent_errors=self._permanent,
                last_success_time=self._last_success,
                last_error=self._last_error,
            )

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before reading the spool, so an append meanwhile is not missed
            try:
                delivered = self._retrying(self._deliver_oldest)
            except _Stopped:
                break
            except Exception as exc:  # a bug or a broken spool must not kill the thread
                _log.exception("forwarder: unexpected failure, retrying in %gs", self._backoff_max)
                self._record_error(exc)
                self._stop.wait(self._backoff_max)
                continue
            if not delivered:
                self._wake.wait(_IDLE_POLL)

    def _deliver_oldest(self) -> bool:
        """Send the oldest pending payload; False if there is none."""
        item = self._spool.oldest(after=self._delete_sent())
        if item is None:
            return False
        try:
            self._uplink.send(item.payload, timeout=self._send_timeout)
        except TransientUplinkError as exc:
            with self._lock:
                self._transient += 1
            self._record_error(exc)
            if not self._offline:
                self._offline = True
                _log.warning("uplink %s unavailable, spooling: %s", self._uplink.kind, exc)
            raise
        except RejectedPayloadError as exc:
            with self._lock:
                self._permanent += 1
            self._record_error(exc)
            _log.error(
                "payload %s refused by %s: %s; moved to dead letters",
                item.payload.message_id,
                self._uplink.kind,
                exc,
            )
            self._ack(item.stream_id, item.seq, str(exc))
            return True
        except PermanentUplinkError as exc:
            with self._lock:
                self._permanent += 1
            self._record_error(exc)
            _log.error(
                "uplink %s refuses to work (%s): keeping the backlog, retrying in %gs",
                self._uplink.kind,
                exc,
                self._backoff_max,
            )
            self._sleep(self._backoff_max)
            return True
        self._ack(item.stream_id, item.seq)
        with self._lock:
            self._sent += 1
            self._last_success = self._clock.time()
        if self._offline:
            self._offline = False
            _log.info("uplink %s delivering again", self._uplink.kind)
        return True

    def _ack(self, stream_id: str, seq: int, reason: str | None = None) -> None:
        """Delete a confirmed payload (move a refused one to the dead letters, with ``reason``),
        or remember it if the spool cannot write now."""
        try:
            self._remove(stream_id, seq, reason)
            return
        except SpoolError as exc:
            if self._undeleted is None:
                _log.warning("spool cannot delete sent payloads (%s): going on; later", exc)
        if self._undeleted is None or self._undeleted[0] != stream_id:
            self._undeleted = (stream_id, [])
        self._undeleted[1].append((seq, reason))

    def _remove(self, stream_id: str, seq: int, reason: str | None) -> None:
        if reason is None:
            self._spool.ack(seq, stream_id=stream_id)
        else:
            self._spool.dead_letter(seq, reason, stream_id=stream_id)

    def _delete_sent(self) -> int | None:
        """Delete the payloads whose delete was refused; the last of them if some remain, so the
        next read goes past what was sent already."""
        if self._undeleted is None:
            return None
        stream_id, seqs = self._undeleted
        if stream_id != self._spool.stream_id:  # a new stream: those rows are gone
            self._undeleted = None
            return None
        try:
            while seqs:
                self._remove(stream_id, *seqs[0])
                seqs.pop(0)
        except SpoolError:
            return seqs[-1][0]
        self._undeleted = None
        _log.info("spool deletes again")
        return None

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self._retries += 1
        _log.debug("forwarder: attempt %d failed, waiting", state.attempt_number)

    def _record_error(self, exc: BaseException) -> None:
        # Reported (twin, /metrics): an SDK's message must not carry a key or signature.
        message = scrub_secrets(f"{type(exc).__name__}: {exc}")[:_MAX_ERROR_LENGTH]
        with self._lock:
            self._last_error = message
