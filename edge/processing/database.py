"""Loading CAN databases (DBC, ARXML, KCD, SYM) with cantools, with errors a user can act on.

Parsing a large database takes cantools tens of milliseconds (a few hundred on a small ARM
board), at every start. A database that took at least ``CACHE_MIN_SECONDS`` to parse is therefore
kept as a pickle in a cache folder (:func:`cache_dir`), under a name made of the SHA-256 of the
file's bytes, the strict flag, the file's suffix, and the cantools and Python versions: an edited
file, another cantools or Python never reads a stale entry. An entry that cannot be read back
(truncated, corrupt, from a class that changed) is ignored, removed and rebuilt; the
``CACHE_MAX_ENTRIES`` most recently used entries are kept. The folder is
created private (0700) and is not used when it belongs to another user or others may write to it,
since unpickling runs code. Caching is best effort: any error there only costs the parse.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cantools
from cantools.database.can import Database

from edge.config.model import Config
from edge.errors import DatabaseLoadError
from edge.processing.repair import Repair, repair_dbc
from edge.vss.mapping import VssMapping, link_config

__all__ = [
    "CACHE_MIN_SECONDS",
    "MAX_DATABASE_BYTES",
    "LoadedDatabase",
    "cache_dir",
    "load_database",
    "load_database_repaired",
    "load_databases",
    "load_vss_mapping",
]

log = logging.getLogger(__name__)

#: Databases that parse faster than this are not worth a cache entry.
CACHE_MIN_SECONDS = 0.02
#: Entries kept, the most recently used.
CACHE_MAX_ENTRIES = 64
#: Bumped when what is cached changes.
_CACHE_FORMAT = 2
#: Environment variable naming the cache folder; empty disables the cache.
CACHE_ENV = "CAN_TELEMETRY_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where parsed databases are cached: ``$CAN_TELEMETRY_CACHE_DIR`` (empty: no cache), else
    ``$XDG_CACHE_HOME/can-telemetry``, else ``~/.cache/can-telemetry``."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "can-telemetry"


def _cache_key(content: bytes, name: str, strict: bool) -> str:
    digest = hashlib.sha256(content).hexdigest()
    suffix = Path(name).suffix.lower().lstrip(".") or "none"
    python = f"{sys.version_info[0]}{sys.version_info[1]}"
    return (
        f"{digest}-{'strict' if strict else 'relaxed'}-{suffix}"
        f"-cantools{cantools.__version__}-py{python}-v{_CACHE_FORMAT}.pickle"
    )


def _private_folder(folder: Path, create: bool) -> bool:
    """Whether ``folder`` is ours alone (created 0700 if ``create``)."""
    try:
        if create:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owner_ok and not info.st_mode & 0o022


class LoadedDatabase(NamedTuple):
    """A database and the repairs its text needed to load (none in strict mode)."""

    database: Database
    repairs: tuple[Repair, ...]


def _cached(folder: Path | None, key: str) -> LoadedDatabase | None:
    if folder is None:
        return None
    entry = folder / key
    try:
        blob = entry.read_bytes()
    except OSError:
        return None
    if not _private_folder(folder, create=False):
        log.warning("database cache %s is not private to this user: not used", folder)
        return None
    try:
        db, repairs = pickle.loads(blob)
        if not isinstance(db, Database):
            raise TypeError(f"not a cantools Database: {type(db).__name__}")
        if not all(isinstance(r, Repair) for r in repairs):
            raise TypeError("not a list of repairs")
    except Exception as exc:  # anything a damaged or foreign pickle raises
        log.warning("database cache entry %s is unreadable (%s): rebuilding it", entry, exc)
        entry.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(entry)  # recently used: kept by _prune
    return LoadedDatabase(db, tuple(repairs))


def _store(folder: Path | None, key: str, loaded: LoadedDatabase) -> None:
    if folder is None or not _private_folder(folder, create=True):
        return
    try:
        blob = pickle.dumps(tuple(loaded), protocol=pickle.HIGHEST_PROTOCOL)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pickle")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(temporary, folder / key)
        except BaseException:
            os.unlink(temporary)
            raise
        _prune(folder)
    except Exception as exc:  # a full disk, a read-only home, an unpicklable object...
        log.debug("database not cached in %s: %s", folder, exc)


def _prune(folder: Path) -> None:
    """Keep the ``CACHE_MAX_ENTRIES`` most recently used entries (edited files leave old ones)."""
    entries = [p for p in folder.glob("*.pickle") if not p.name.startswith(".")]
    if len(entries) <= CACHE_MAX_ENTRIES:
        return
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[CACHE_MAX_ENTRIES:]:
        stale.unlink(missing_ok=True)


#: Largest database file loaded (bytes). The largest real DBC files are around 1 MB; cantools
#: needs minutes and gigabytes for a 50 MB one, so a larger file is refused before parsing.
MAX_DATABASE_BYTES = 16 * 1024 * 1024


def _check_size(name: str) -> None:
    """Refuse a file over :data:`MAX_DATABASE_BYTES` (a missing one is reported by the loader)."""
    with contextlib.suppress(OSError):
        size = os.stat(name).st_size
        if size > MAX_DATABASE_BYTES:
            raise DatabaseLoadError(
                name,
                f"{size / 1e6:.1f} MB is larger than the {MAX_DATABASE_BYTES // 2**20} MiB a CAN "
                "database may have here (keep the messages of this bus only)",
            )


def load_database(
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    cache: Path | bool | None = True,
) -> Database:
    """Load one CAN database file. Any failure (missing file, syntax error, overlapping signals in
    strict mode, an ARXML that is not a CAN database) raises :class:`DatabaseLoadError` naming the
    file and cantools' reason. With ``strict`` False, a DBC file cantools refuses is repaired
    first (see :func:`load_database_repaired`).

    ``cache``: True for the default cache folder (:func:`cache_dir`), a folder, or False/None for
    no cache (see the module docstring)."""
    return load_database_repaired(path, strict=strict, cache=cache).database


def load_database_repaired(
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    cache: Path | bool | None = True,
) -> LoadedDatabase:
    """:func:`load_database`, with the repairs the file needed. In strict mode nothing is
    repaired: cantools' refusal is the answer. Otherwise a DBC file that cantools refuses as it
    is has its known quirks repaired (edge.processing.repair) and is loaded from the repaired text;
    each repair is logged as a warning naming the file and line. A file that still does not
    load is refused with cantools' reason for the original text."""
    name = os.fspath(path)
    _check_size(name)
    folder = cache_dir() if cache is True else (cache or None)
    content: bytes | None = None
    if folder is not None:
        # Missing, a folder, unreadable: cantools reports it below, as without a cache.
        with contextlib.suppress(OSError):
            content = Path(name).read_bytes()
    key = _cache_key(content, name, strict) if content is not None else ""
    if content is not None:
        cached = _cached(folder, key)
        if cached is not None:
            _warn(name, cached.repairs)
            return cached
    started = time.perf_counter()
    repaired: LoadedDatabase | None = None
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
        repaired = None if strict else _repaired(name)
        if repaired is None:
            if strict and (_loads_relaxed(name) or _repaired(name) is not None):
                reason += " (it loads with strict = false on the bus)"
            raise DatabaseLoadError(name, reason) from exc
        db = repaired.database
    if not isinstance(db, Database):
        raise DatabaseLoadError(name, "not a CAN database (a diagnostics database?)")
    loaded = LoadedDatabase(db, repaired.repairs if repaired is not None else ())
    _warn(name, loaded.repairs)
    if content is not None and time.perf_counter() - started >= CACHE_MIN_SECONDS:
        _store(folder, key, loaded)
    return loaded


def _repaired(name: str) -> LoadedDatabase | None:
    """The database of ``name``'s repaired text (not strict), or None: not a DBC file, nothing
    to repair, or still refused."""
    if Path(name).suffix.lower() != ".dbc":
        return None
    try:
        text = Path(name).read_text(encoding="cp1252")  # cantools' encoding for DBC files
        fixed, repairs = repair_dbc(text)
        if not repairs:
            return None
        db = cantools.database.load_string(fixed, database_format="dbc", strict=False)
    except Exception:
        return None
    return LoadedDatabase(db, tuple(repairs)) if isinstance(db, Database) else None


def _warn(name: str, repairs: Sequence[Repair]) -> None:
    """One warning per repaired file (the first repair as an example; ``can-telemetry dbc
    --no-strict FILE`` lists them all), every repair at DEBUG."""
    if not repairs:
        return
    log.warning(
        "%s loaded after %d repair(s) (list them: can-telemetry dbc --no-strict %s); e.g. %s",
        name,
        len(repairs),
        name,
        repairs[0].describe(name),
    )
    for repair in repairs:
        log.debug("repaired %s", repair.describe(name))


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


def load_vss_mapping(config: Config, databases: Sequence[Database] | None = None) -> VssMapping:
    """Every bus's VSS mapping files of ``config`` (:mod:`edge.vss.mapping`), checked against its
    databases (loaded here unless given, in bus order) and the configured VSS tree. Raises
    ConfigError (a VssMappingError naming file, path and reason for a bad entry)."""
    if databases is None and any(b.vss_mapping for b in config.buses):
        databases = [load_databases(b.databases, strict=b.strict) for b in config.buses]
    return link_config(config, databases or ())
