"""The last-known state: :mod:`edge.processing.latest` (it reads the processing stage's tracks,
and the processor answers ``getSignals`` with it). Importable from here too, as before."""

from edge.processing.latest import LatestFrame, latest_signals, matcher

__all__ = ["LatestFrame", "latest_signals", "matcher"]
