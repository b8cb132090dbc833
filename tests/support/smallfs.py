"""A real, small file system for disk-full tests: a size-limited tmpfs mounted by the test.

Mounting needs root (CI runs as root); elsewhere the tests that use it skip with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "small_fs"]

#: The size the issue reproduced the wedge with.
SMALL_FS_SIZE = "20m"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs mounted on a fresh folder, unmounted afterwards."""
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_SIZE}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system refuses (ENOSPC); return the bytes written."""
    written = 0
    block = b"\0" * 65536
    with path.open("wb", buffering=0) as file:
        try:
            while True:
                written += file.write(block) or 0
        except OSError:
            pass
    return written
