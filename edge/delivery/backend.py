"""The back end: spool -> forwarder -> uplink, the delivery half of a pipeline, opened and closed
as one.

Its life is longer than the front's (sources, frame queue, processing): on IoT Edge a new
configuration from the module twin replaces the front while the same back end goes on sending
(:mod:`edge.iotedge.module`); ``can-telemetry run`` opens one with its pipeline and closes it
when the pipeline stops (:class:`edge.pipeline.Pipeline`). Both use this one class.

Order. :meth:`Backend.open` opens the spool, builds the uplink, then the forwarder between them;
:meth:`Backend.start` lets the forwarder send; :meth:`Backend.close` undoes it in reverse: the
forwarder stops (after draining, if asked), then the uplink closes, then the spool. If a step of
``open`` fails, what was opened before it is closed, in the same reverse order, and the error is
raised: nothing is left open behind a failed start. ``close`` goes through every step even when
one of them raises, and raises at the end (an earlier error chained as the context).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.clock import Clock, SystemClock
from edge.delivery.forwarder import Forwarder, ForwarderStats
from edge.delivery.spool import Spool, SpoolStats
from edge.delivery.uplinks import uplink_class
from edge.delivery.uplinks.base import Uplink

if TYPE_CHECKING:  # types only
    from edge.config.model import Config, ForwarderConfig, SpoolConfig, UplinkConfig

__all__ = ["Backend", "BackendSettings", "UplinkFactory", "configured_uplink"]

log = logging.getLogger(__name__)

#: Builds the uplink of a back end from its settings.
UplinkFactory = Callable[["UplinkConfig"], Uplink]

#: How long ``close`` waits for the forwarder's thread (a send in progress ends within its
#: ``send_timeout``).
FORWARDER_STOP_TIMEOUT = 10.0


def configured_uplink(settings: UplinkConfig) -> Uplink:
    """The uplink ``settings`` names, from the registry (:mod:`edge.delivery.uplinks`)."""
    return uplink_class(settings.kind).from_options(settings.options)


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """The configuration of a back end: a change in any of them needs a new one."""

    spool: SpoolConfig
    forwarder: ForwarderConfig
    uplink: UplinkConfig

    @classmethod
    def of(cls, config: Config) -> BackendSettings:
        """The back end's slice of ``config``."""
        return cls(config.spool, config.forwarder, config.uplink)


class Backend:
    """Spool, uplink and the forwarder between them: one owner. :meth:`open`, :meth:`start`,
    then :meth:`close` (see the module docstring)."""

    def __init__(
        self, settings: BackendSettings, spool: Spool, uplink: Uplink, forwarder: Forwarder
    ) -> None:
        """Take over parts already opened (use :meth:`open`)."""
        self.settings = settings
        self.spool = spool
        self.uplink = uplink
        self.forwarder = forwarder
        self._closed = False
        self._closed_stats: tuple[SpoolStats, ForwarderStats] | None = None

    @classmethod
    def open(
        cls,
        settings: BackendSettings,
        *,
        clock: Clock | None = None,
        uplink: UplinkFactory = configured_uplink,
    ) -> Backend:
        """Open the spool, build the uplink (``uplink(settings.uplink)``) and the forwarder from
        one to the other, not sending yet. On failure, close what was opened and raise."""
        clock = clock or SystemClock()
        with ExitStack() as opened:
            spool = Spool(
                settings.spool.path,
                max_bytes=settings.spool.max_bytes,
                ttl=settings.spool.ttl,
                clock=clock,
            )
            opened.callback(spool.close)
            link = uplink(settings.uplink)
            opened.callback(link.close)
            retry = settings.forwarder
            forwarder = Forwarder(
                spool,
                link,
                send_timeout=retry.send_timeout,
                backoff_initial=retry.backoff_initial,
                backoff_max=retry.backoff_max,
                clock=clock,
            )
            opened.pop_all()  # all opened: the back end owns them now
        return cls(settings, spool, link, forwarder)

    def start(self) -> None:
        """Start sending what the spool holds and what is appended to it."""
        self.forwarder.start()

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop the forwarder (after up to ``drain_timeout`` seconds of sending what is pending),
        close the uplink, then the spool. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        with ExitStack() as closing:  # runs the steps below in reverse, each one whatever fails
            closing.callback(self.spool.close)
            closing.callback(self._keep_stats)
            closing.callback(self.uplink.close)
            closing.callback(self.forwarder.stop, timeout=FORWARDER_STOP_TIMEOUT)
            if drain_timeout > 0:
                self.forwarder.drain(drain_timeout)

    def _keep_stats(self) -> None:
        self._closed_stats = (self.spool.stats(), self.forwarder.stats())

    def spool_stats(self) -> SpoolStats:
        """The spool's counters (after :meth:`close`: as they were then)."""
        if self._closed_stats is not None:
            return self._closed_stats[0]
        return self.spool.stats()

    def forwarder_stats(self) -> ForwarderStats:
        """The forwarder's counters (after :meth:`close`: as they were then)."""
        if self._closed_stats is not None:
            return self._closed_stats[1]
        return self.forwarder.stats()
