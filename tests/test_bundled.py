"""Tests of edge/bundled.py: where the files shipped with the package are found."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.bundled import (
    DEMO_DBC,
    OBD2_DBC,
    _packaged_file,
    bundled_databases_dir,
    bundled_mappings_dir,
)
from edge.iotedge import twin
from edge.simulator import vehicle
from edge.vss import mapping


def test_packaged_file_prefers_the_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "fake_dbc_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "car.dbc").write_text('VERSION ""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    fallback = tmp_path / "elsewhere.dbc"

    assert _packaged_file("fake_dbc_pkg", "car.dbc", fallback) == package / "car.dbc"
    assert _packaged_file("fake_dbc_pkg", "missing.dbc", fallback) == fallback
    assert _packaged_file("no_such_pkg_for_dbc", "car.dbc", fallback) == fallback


def test_the_bundled_files_are_found_in_the_source_tree() -> None:
    assert DEMO_DBC.is_file() and OBD2_DBC.is_file()
    assert bundled_databases_dir() == DEMO_DBC.parent
    assert (bundled_mappings_dir() / "demo_vehicle.json").is_file()


def test_old_import_places_still_work() -> None:
    assert vehicle.DEMO_DBC == DEMO_DBC and vehicle.OBD2_DBC == OBD2_DBC
    assert twin.bundled_databases_dir is bundled_databases_dir
    assert mapping.bundled_mappings_dir is bundled_mappings_dir
