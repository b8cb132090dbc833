"""The cloud side needs none of the in-vehicle dependencies, checked three ways: the wheel's own
metadata (built here by the project's build backend) gives the ``lake`` extra a closure without
them; every edge.lake module imports with them blocked; and the lake's commands run, end to end in
a fresh interpreter, with every one of them made unimportable (while ``run`` says what to
install instead of a traceback)."""

from __future__ import annotations

import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import edge.lake
from edge.cli.requires import EXTRAS
from edge.delivery.uplinks.file import FileUplink
from edge.lake.local import read_table
from tests.support.lake import Fleet, edge_rows, lake_rows

ROOT = Path(__file__).parents[2]
PROJECT = "can-telemetry"
#: The in-vehicle stack's import names (the ``edge`` extra, as the CLI's message knows it).
IN_VEHICLE_IMPORTS = sorted(name for name, (_, extra) in EXTRAS.items() if extra == "edge")

# Installed in a fresh interpreter (sitecustomize on PYTHONPATH): importing any in-vehicle
# library fails exactly as when it is not installed.
_SITECUSTOMIZE = """
import sys

BLOCKED = set({blocked!r})


class InVehicleBlocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, InVehicleBlocker())
"""


def wheel_metadata(tmp_path: Path) -> dict[str, list[str]]:
    """``Requires-Dist`` of the project's wheel, built by pip with the project's own build
    backend from a copy of the sources: the base's requirements under ``""``, each extra's
    under its name."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("edge", "dbc"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if build.returncode and "Could not find a version that satisfies" in build.stderr:
        pytest.skip("the build backend cannot be downloaded here (offline)")
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("can_telemetry-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    by_extra: dict[str, list[str]] = {"": []}
    for extra in metadata.get_all("Provides-Extra") or []:
        by_extra[extra] = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        extras = [e for e in by_extra if e and requirement.marker and _in_extra(requirement, e)]
        for extra in extras or [""]:
            by_extra[extra].append(line)
    return by_extra


def _in_extra(requirement: Requirement, extra: str) -> bool:
    assert requirement.marker is not None
    return requirement.marker.evaluate({"extra": extra})


def closure(metadata: dict[str, list[str]], extra: str) -> set[str]:
    """Every distribution ``pip install 'can-telemetry[extra]'`` brings: the project's base and
    the extra's requirements, then theirs (from the installed distributions' metadata), all the
    way down; the project's own extras (``[all]`` names the others) are followed too."""
    seen: set[str] = set()
    todo = [(PROJECT, extra)]
    done_own: set[str] = set()
    while todo:
        name, wanted = todo.pop()
        if canonicalize_name(name) == PROJECT:
            for one in ["", *wanted.split(",")]:
                if one in done_own:
                    continue
                done_own.add(one)
                for line in metadata[one]:
                    requirement = Requirement(line)
                    todo.append((requirement.name, ",".join(sorted(requirement.extras))))
            continue
        key = canonicalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue  # a requirement of this platform's marker not installed here
        for line in lines:
            requirement = Requirement(line)
            environment = {"extra": wanted or ""}
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append((requirement.name, ",".join(sorted(requirement.extras))))
    return seen


def test_the_lake_extras_closure_has_none_of_the_in_vehicle_stack(tmp_path: Path) -> None:
    metadata = wheel_metadata(tmp_path)
    assert {"edge", "lake", "vss", "all", "test"} <= set(metadata)
    in_vehicle = {canonicalize_name(Requirement(line).name) for line in metadata["edge"]}
    assert {"python-can", "cantools", "azure-iot-device", "paho-mqtt", "can-isotp", "udsoncan"} <= (
        in_vehicle
    )
    # The CLI's "what to install" table names each of them, with the right extra.
    named = {canonicalize_name(d) for d, extra in EXTRAS.values() if extra == "edge"}
    assert named == in_vehicle
    lake = closure(metadata, "lake")
    # pandas: PySpark's mapInArrow refuses to run without it (seen on a fresh `[lake]` venv).
    assert {"pyarrow", "fastavro", "pyspark", "pandas", "duckdb", "matplotlib", "msgpack"} <= lake
    assert not lake & in_vehicle, sorted(lake & in_vehicle)
    assert not {"python-can", "azure-iot-device", "paho-mqtt", "cantools"} & lake
    # The car's one command brings the whole in-vehicle stack; [all] brings both halves.
    assert in_vehicle <= closure(metadata, "edge")
    assert in_vehicle | lake <= closure(metadata, "all")


_IMPORT_ALL = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from edge.lake.commands import register
import argparse
register(argparse.ArgumentParser().add_subparsers())
print("imported", len(sys.argv) - 1)
"""


def blocked_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose interpreters cannot import any in-vehicle library."""
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(blocked=IN_VEHICLE_IMPORTS))
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}


def test_the_lake_imports_without_the_in_vehicle_stack(tmp_path: Path) -> None:
    assert {"can", "cantools", "azure", "paho", "isotp", "udsoncan"} <= set(IN_VEHICLE_IMPORTS)
    modules = [info.name for info in pkgutil.walk_packages(edge.lake.__path__, "edge.lake.")]
    assert {"edge.lake.arrow", "edge.lake.local", "edge.lake.spark", "edge.lake.plot"} <= set(
        modules
    )
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=blocked_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(modules)}"


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=blocked_env(tmp_path),
    )


def test_the_lake_commands_run_without_the_in_vehicle_stack(fleet: Fleet, tmp_path: Path) -> None:
    """``lake ingest`` (Avro and an outbox), ``decode`` and ``plot``, as the cloud runs them:
    a fresh interpreter where python-can, cantools, the Azure SDK, paho, can-isotp, udsoncan
    and the rest of the ``edge`` extra cannot be imported."""
    outbox = FileUplink(tmp_path / "outbox", fsync=False)
    for payload in fleet.payloads["kona"]:
        outbox.send(payload, 1.0)
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    probe = _cli(tmp_path, "lake", "ingest", str(hub), str(outbox.path), "--lake", str(lake))
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    kona = len(fleet.payloads["kona"])
    assert (report["new"], report["duplicates"]) == (len(fleet.messages), kona)
    assert lake_rows(lake) == edge_rows(fleet)
    assert read_table(lake, "streams").num_rows == 2

    decoded = _cli(tmp_path, "decode", str(outbox.path))
    assert decoded.returncode == 0, decoded.stderr
    lines = decoded.stdout.splitlines()
    kona_rows = sum(1 for row in fleet.edge_rows() if row[0] == "0a" * 16)
    assert len(lines) == kona_rows and "signal" in json.loads(lines[0])

    image = tmp_path / "kona.png"
    plotted = _cli(tmp_path, "plot", str(lake), "--vehicle", "corpus-kona", "-o", str(image))
    assert plotted.returncode == 0, plotted.stderr
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--config", str(ROOT / "examples" / "car.toml")],
        ["demo", "--duration", "1"],
        ["simulate", "--duration", "1"],
        ["dbc", str(ROOT / "dbc" / "demo_vehicle.dbc")],
        ["module"],
    ],
    ids=lambda command: command[0],
)
def test_an_in_vehicle_command_says_what_to_install(tmp_path: Path, command: list[str]) -> None:
    result = _cli(tmp_path, *command)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    found = re.fullmatch(rf"can-telemetry {command[0]} needs (\S+): pip install '(\S+)'", line)
    assert found, line
    assert found[1] in {d for d, extra in EXTRAS.values() if extra == "edge"}
    assert found[2] == "can-telemetry[edge]"
