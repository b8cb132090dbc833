"""Files a configuration names, looked at without raising: a name no file system takes (longer
than 255 bytes, say) is a file that is not there, which the caller refuses naming its field."""

from __future__ import annotations

from pathlib import Path

__all__ = ["exists", "is_file"]


def is_file(path: str | Path) -> bool:
    """Whether ``path`` names a regular file (False for a name the file system refuses)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # ENAMETOOLONG and kin; a NUL in the name
        return False


def exists(path: str | Path) -> bool:
    """Whether something is at ``path`` (False for a name the file system refuses)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False
