"""Which signals are kept, and when a value is worth sending.

Modes, per signal (configured by glob on ``Message.Signal``; the first matching rule wins):

- ``every``: each decoded value.
- ``on_change``: a value that differs from the last one sent by more than ``deadband``
  (absolute, in physical units; 0 = any change). The default, which is lossless: the last sent
  value of every signal is its value until the next one.
- ``min_interval``: like on_change, but at most one value per ``interval`` seconds; a change held
  back is sent with the first frame after the interval (the latest value wins).
- ``heartbeat`` (any mode): after ``heartbeat`` seconds without a value sent, the current value
  is sent again, so the cloud can tell "unchanged" from "gone". Heartbeats ride on frames: a
  message that stops arriving sends nothing more.

All times are frame times, so a replay at any speed gives the same samples as the live drive.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cantools.database.can import Message
from cantools.database.can.signal import Signal

from edge.config import SignalRule, SignalsConfig
from edge.schema import MessageInfo

__all__ = ["Policy", "Selection", "TrackSampler"]

_EVERY, _ON_CHANGE, _MIN_INTERVAL = 0, 1, 2
_MODE_CODES = {"every": _EVERY, "on_change": _ON_CHANGE, "min_interval": _MIN_INTERVAL}


@dataclass(frozen=True, slots=True)
class Policy:
    """How one signal is sampled (deadband in physical units; times in seconds)."""

    mode: str
    deadband: float = 0.0
    interval: float = 0.0
    heartbeat: float = 0.0


def _compile(patterns: Sequence[str]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class Selection:
    """Resolves the configured include/exclude globs and rules for each signal."""

    def __init__(self, config: SignalsConfig) -> None:
        self._include = _compile(config.include)
        self._exclude = _compile(config.exclude)
        self._rules = [(_compile(r.match), frozenset(r.buses), r) for r in config.rules]
        self._default = config.default

    def policy(self, bus: str, message: Message, signal: Signal) -> Policy | None:
        """The policy of ``signal`` on ``bus``, or None when it is not selected."""
        name = f"{message.name}.{signal.name}"
        if not self._include.match(name) or self._exclude.match(name):
            return None
        rule: SignalRule = self._default
        for pattern, buses, candidate in self._rules:
            if (not buses or bus in buses) and pattern.match(name):
                rule = candidate
                break
        return Policy(rule.mode, rule.deadband, rule.interval, rule.heartbeat)

    def selects(self, bus: str, message: Message, signal: Signal) -> bool:
        """Whether ``signal`` is kept at all."""
        return self.policy(bus, message, signal) is not None


class TrackSampler:
    """The sampling state of one message (of one source address): the last value sent and when,
    per selected signal. ``sample`` returns the ``(column, raw value)`` pairs to send."""

    __slots__ = (
        "_deadbands",
        "_heartbeats",
        "_intervals",
        "_last",
        "_modes",
        "_names",
        "_next_check",
        "_sent_at",
    )

    def __init__(self, info: MessageInfo, policies: Sequence[Policy]) -> None:
        self._names = [s.name for s in info.signals]
        self._modes = [_MODE_CODES[p.mode] for p in policies]
        # Values are compared raw: a physical deadband becomes a raw one.
        self._deadbands = [
            p.deadband / abs(s.scale) if p.deadband and s.scale else 0.0
            for p, s in zip(policies, info.signals, strict=True)
        ]
        self._intervals = [p.interval for p in policies]
        self._heartbeats = [p.heartbeat for p in policies]
        self._last: list[int | float | None] = [None] * len(policies)
        self._sent_at = [-math.inf] * len(policies)
        self._next_check = -math.inf

    def sample(
        self, t: float, values: dict[str, int | float], repeated: bool
    ) -> list[tuple[int, int | float]]:
        """The columns to send for a frame at time ``t`` whose raw signal values are ``values``.

        ``repeated`` says the frame's payload equals the previous one of this message: then only
        heartbeats, held-back changes and ``every`` signals can produce output, and when none is
        due (the common case) this returns at once.
        """
        if repeated and t < self._next_check:
            return []
        out: list[tuple[int, int | float]] = []
        next_check = math.inf
        last, sent_at = self._last, self._sent_at
        for i, name in enumerate(self._names):
            value = values.get(name)
            if value is None:  # a multiplexed signal absent from this frame
                continue
            mode = self._modes[i]
            previous = last[i]
            heartbeat = self._heartbeats[i]
            send = False
            if mode == _EVERY or previous is None:
                send = True
            elif value != previous and (
                not self._deadbands[i] or abs(value - previous) > self._deadbands[i]
            ):
                if mode == _ON_CHANGE or t - sent_at[i] >= self._intervals[i]:
                    send = True
                else:  # held back by the rate limit: look again when the interval is over
                    next_check = min(next_check, sent_at[i] + self._intervals[i])
            elif heartbeat and t - sent_at[i] >= heartbeat:
                send = True
            if send:
                out.append((i, value))
                last[i] = value
                sent_at[i] = t
            if mode == _EVERY:
                next_check = -math.inf
            elif heartbeat:
                next_check = min(next_check, sent_at[i] + heartbeat)
        self._next_check = next_check
        return out
