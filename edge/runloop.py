"""The run loop of the long-running commands: ``can-telemetry run`` (a pipeline) and the IoT Edge
module (``can-telemetry module``, ``python -m edge.iotedge.module``).

One order for both (:func:`run_until_stopped`):

1. the metrics server, if any, starts; a port that cannot be served is a configuration error
   (:class:`~edge.errors.ConfigError` on ``metrics_port``), raised before anything else
   happened: no signal handler installed, nothing started;
2. SIGTERM and SIGINT set the stop event, until the loop returns (then the caller's handlers
   come back: a command run from Python, as the tests do, leaves the process as it found it);
3. ``start``; if it raises, ``stop`` without draining, and the error goes to the caller;
4. ``wait`` until a signal, or until the service has finished by itself (a replay that reached
   the end of its log);
5. ``stop``: send what is spooled for up to ``drain_timeout`` seconds after a signal (a restart
   policy waits only so long), ``finished_drain_timeout`` after finishing by itself;
6. the metrics server stops.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from edge.errors import ConfigError
from edge.metrics import MetricsServer

__all__ = ["run_until_stopped", "stopping_on_signals"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` while inside; the caller's handlers come back after."""
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def run_until_stopped(
    start: Callable[[], None],
    wait: Callable[[threading.Event], None],
    stop: Callable[[float], None],
    *,
    metrics: MetricsServer | None = None,
    drain_timeout: float = 2.0,
    finished_drain_timeout: float = 5.0,
) -> bool:
    """Run a service in the order of the module docstring; True if a signal stopped it, False
    if it finished by itself.

    ``wait(event)`` blocks until ``event`` is set or the service has finished; ``stop(seconds)``
    stops it, sending for up to that long. ``metrics`` is started first and stopped last.
    """
    if metrics is not None:
        try:
            metrics.start()
        except OSError as exc:  # nothing else has happened
            reason = f"cannot serve on port {metrics.port}: {exc.strerror or exc}"
            raise ConfigError("metrics_port", reason) from exc
    try:
        stopping = threading.Event()
        with stopping_on_signals(stopping):
            try:
                start()
            except BaseException:
                stop(0.0)
                raise
            wait(stopping)
            signalled = stopping.is_set()
            stop(drain_timeout if signalled else finished_drain_timeout)
        return signalled
    finally:
        if metrics is not None:
            metrics.stop()
