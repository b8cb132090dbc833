"""The cloud side needs none of the in-vehicle dependencies: every edge.lake module imports with
python-can and azure-iot-device made unimportable (a real subprocess, a fresh interpreter)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import edge.lake

_SCRIPT = """
import importlib, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("can", "azure", "paho"):
            raise ImportError(f"{name} is an in-vehicle dependency")
        return None

sys.meta_path.insert(0, Blocker())
for name in sys.argv[1:]:
    importlib.import_module(name)
from edge.lake.commands import register
import argparse
register(argparse.ArgumentParser().add_subparsers())
print("imported", len(sys.argv) - 1)
"""


def test_the_lake_imports_without_python_can_or_the_azure_sdk() -> None:
    modules = [info.name for info in pkgutil.walk_packages(edge.lake.__path__, "edge.lake.")]
    assert {"edge.lake.arrow", "edge.lake.local", "edge.lake.spark", "edge.lake.plot"} <= set(
        modules
    )
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(modules)}"
