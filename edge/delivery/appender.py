"""Appending payloads to the spool, and noticing when its stream changes.

The spool numbers each payload as it commits it: a writer hands it a *builder*, ``build(stream,
seq) -> Payload``, and the spool calls it with the stream id and the next sequence number
(:meth:`edge.delivery.spool.Spool.append`). Every writer of payloads (the processing stage, the
campaign engine) does the same around it: make the payload with its codec, add its own
properties, keep the size, and remember the stream: a stream id that changes means the spool
file was replaced (a corrupt one moved aside), so the cloud needs the schema again at once.
:class:`PayloadAppender` is that, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edge.wire.codec import Codec
from edge.wire.payload import Payload

__all__ = ["Append", "PayloadAppender"]

#: The spool's ``append(build)`` or ``append(build, priority=p)``; returns the sequence number.
Append = Callable[..., int]


class PayloadAppender:
    """Builds payloads with ``codec`` and appends them with ``append`` (the spool's).

    ``stream`` is the stream id of the last payload the spool kept (None before the first)."""

    def __init__(self, append: Append, codec: Codec) -> None:
        self._append = append
        self._codec = codec
        self.stream: str | None = None

    def append(
        self,
        kind: int,
        envelope: Mapping[str, Any],
        body: bytes,
        *,
        priority: int | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> tuple[int, bool]:
        """Append one payload; returns its size in bytes and whether it opened a new stream
        (the spool's stream id differs from the previous payload's: send the schema again).
        ``priority`` is passed to the spool when given; ``properties`` are added to the
        payload's. Raises what ``append`` raises (:class:`~edge.errors.SpoolError`)."""
        built: list[tuple[str, int]] = []  # (stream, size) of each build

        def build(stream: str, seq: int) -> Payload:
            payload = self._codec.payload(kind, envelope, body, stream, seq)
            built.append((stream, len(payload.body)))
            if properties:
                return Payload(payload.body, {**payload.properties, **properties})
            return payload

        if priority is None:
            self._append(build)
        else:
            self._append(build, priority=priority)
        # Only a payload the spool kept moves the stream on: were the first payload of a new
        # stream refused, the next one must still say the stream is new.
        if not built:  # an append that stored nothing (not the spool's contract)
            return 0, False
        stream, size = built[-1]
        new_stream = self.stream is not None and stream != self.stream
        self.stream = stream
        return size, new_stream
