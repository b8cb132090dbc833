"""The ``file`` uplink: an outbox folder with one file per payload, for local consumers and tests.

Each payload becomes ``{stream}-{seq:012d}.{kind}.ctl`` holding exactly the payload body (its
properties can be read back from it: kind and compression from the header, stream, sequence and
schema from the envelope, the vehicle from the stream's schema payload; see docs/format.md;
nothing else is written). Names sort
in stream order and are unique, so re-sending a payload (at-least-once delivery) replaces the same
file. A file appears complete or not at all: it is written under a hidden temporary name in the
same folder, fsynced, renamed into place with ``os.replace``, and the folder is fsynced; a
consumer should ignore names starting with a dot. Temporary files left by a crash are removed when
the uplink is created.

Options (``[uplink]`` with ``type = "file"``; declared in :mod:`edge.config.uplinks`):

* ``path`` (required): the outbox folder, created if missing.
* ``fsync`` (default true): make each file durable before confirming it; false only for tmpfs or
  tests.
* ``max_files`` (optional): when the outbox holds that many payload files, ``send`` raises
  TransientUplinkError, so a consumer that stopped reading makes the spool (bounded) absorb the
  backlog rather than the disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from edge.config.uplinks import FileOptions
from edge.delivery.uplinks.base import Uplink
from edge.errors import ConfigError, RejectedPayloadError, TransientUplinkError
from edge.wire.payload import Payload

__all__ = ["FileUplink"]

_SUFFIX = ".ctl"
_TEMP_SUFFIX = ".tmp"
_NAME_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")


class FileUplink(Uplink):
    """Writes each payload atomically to its own file in an outbox folder."""

    kind = "file"
    Options = FileOptions

    @classmethod
    def from_options(cls, options: FileOptions) -> FileUplink:
        """Build the uplink from parsed options (its constructor takes them one by one)."""
        return cls(options.path, fsync=options.fsync, max_files=options.max_files)

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool = True, max_files: int | None = None
    ) -> None:
        """Use ``path`` as the outbox (created if missing); see the module docstring."""
        self._dir = Path(path)
        self._fsync = fsync
        self._max_files = max_files
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            entries = list(os.scandir(self._dir))
        except OSError as exc:  # a file in the way, no permission, read-only filesystem
            raise ConfigError(
                "uplink.path", f"cannot use {path} as the outbox folder: {exc.strerror or exc}"
            ) from exc
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(_SUFFIX + _TEMP_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    @property
    def path(self) -> Path:
        """The outbox folder."""
        return self._dir

    @staticmethod
    def file_name(payload: Payload) -> str:
        """``{stream}-{seq:012d}.{kind}.ctl`` from the payload's properties.

        Raises PermanentUplinkError when a property is missing or unsafe in a file name.
        """
        props = payload.properties
        stream, seq, kind = props.get("stream"), props.get("seq"), props.get("kind")
        if stream is None or not _NAME_PART.fullmatch(stream):
            raise RejectedPayloadError(f"payload property stream={stream!r} is not a valid name")
        if kind is None or not _NAME_PART.fullmatch(kind):
            raise RejectedPayloadError(f"payload property kind={kind!r} is not a valid name")
        if seq is None or not seq.isascii() or not seq.isdigit():
            raise RejectedPayloadError(f"payload property seq={seq!r} is not a number")
        return f"{stream}-{int(seq):012d}.{kind}{_SUFFIX}"

    def send(self, payload: Payload, timeout: float) -> None:
        """Write the payload's file; returns once it is renamed into place (and synced).

        Local file operations do not honour ``timeout``. Raises TransientUplinkError on I/O errors
        (disk full, folder gone) or a full outbox, PermanentUplinkError on unnameable payloads.
        """
        name = self.file_name(payload)
        final = self._dir / name
        try:
            full = self._max_files is not None and self._count() >= self._max_files
            if full and not final.exists():  # replacing a file already there adds nothing
                raise TransientUplinkError(
                    f"outbox {self._dir} holds {self._max_files} files (max_files)"
                )
            self._write(final, payload.body)
        except OSError as exc:
            raise TransientUplinkError(f"cannot write {final}: {exc}") from exc

    def _count(self) -> int:
        with os.scandir(self._dir) as entries:
            return sum(1 for e in entries if e.name.endswith(_SUFFIX) and e.name[0] != ".")

    def _write(self, final: Path, body: bytes) -> None:
        temp = self._dir / f".{final.name}.{secrets.token_hex(4)}{_SUFFIX}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        if self._fsync:
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
