"""Text for a terminal: what the commands print when it comes from a file or a payload."""

from __future__ import annotations

from typing import TextIO

__all__ = ["PrintableWriter", "printable"]


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on or not show (control characters,
    raw bytes read as text) written as a Python escape, e.g. ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PrintableWriter:
    """A text stream that writes :func:`printable` text (a lone newline from ``print`` as is)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        """Write ``text`` made printable; returns what the stream returns."""
        return self._stream.write(text if text == "\n" else printable(text))
