"""Loading CAN databases (DBC, ARXML, KCD, SYM) with cantools, with errors a user can act on."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import cantools
from cantools.database.can import Database

from edge.errors import DatabaseLoadError

__all__ = ["load_database", "load_databases"]

log = logging.getLogger(__name__)


def load_database(path: str | os.PathLike[str], *, strict: bool = True) -> Database:
    """Load one CAN database file. Any failure (missing file, syntax error, overlapping signals in
    strict mode, an ARXML that is not a CAN database) raises :class:`DatabaseLoadError` naming the
    file and cantools' reason."""
    name = os.fspath(path)
    try:
        db = cantools.database.load_file(name, strict=strict, database_format=None)
    except FileNotFoundError as exc:
        raise DatabaseLoadError(name, "file not found") from exc
    except IsADirectoryError as exc:
        raise DatabaseLoadError(name, "is a directory") from exc
    except PermissionError as exc:
        raise DatabaseLoadError(name, "permission denied") from exc
    except UnicodeDecodeError as exc:
        raise DatabaseLoadError(name, f"cannot read text: {exc.reason}") from exc
    except Exception as exc:  # cantools raises many types: ParseError, Error, ValueError, KeyError
        reason = str(exc).strip() or type(exc).__name__
        if strict and _loads_relaxed(name):
            reason += " (it loads with strict = false on the bus)"
        raise DatabaseLoadError(name, reason) from exc
    if not isinstance(db, Database):
        raise DatabaseLoadError(name, "not a CAN database (a diagnostics database?)")
    return db


def _loads_relaxed(name: str) -> bool:
    try:
        cantools.database.load_file(name, strict=False)
    except Exception:
        return False
    return True


def load_databases(paths: Sequence[str], *, strict: bool = True) -> Database:
    """Load several files into one database (a bus often has one DBC per ECU or domain)."""
    if len(paths) == 1:
        return load_database(paths[0], strict=strict)
    merged = Database(strict=strict)
    owners: dict[tuple[int, bool] | str, str] = {}
    for path in paths:
        db = load_database(path, strict=strict)
        for message in db.messages:
            for key in ((message.frame_id, bool(message.is_extended_frame)), message.name):
                if key in owners:
                    what = f"frame id {message.frame_id:#x}" if isinstance(key, tuple) else key
                    raise DatabaseLoadError(
                        path, f"{what} is also defined in {owners[key]} (one bus, one meaning)"
                    )
                owners[key] = path
            merged.messages.append(message)
        merged.nodes.extend(db.nodes)
    try:
        merged.refresh()
    except Exception as exc:
        raise DatabaseLoadError(", ".join(paths), f"databases conflict: {exc}") from exc
    return merged
