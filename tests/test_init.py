"""The package's public surface is exactly ``edge.__all__``."""

from __future__ import annotations

import importlib
import pkgutil
import types

import edge


def test_all_names_exist_and_are_sorted() -> None:
    assert edge.__all__ == sorted(edge.__all__)
    for name in edge.__all__:
        assert hasattr(edge, name), name


def test_no_public_name_outside_all() -> None:
    public = {
        name
        for name, value in vars(edge).items()
        if not name.startswith("_")
        and not (isinstance(value, types.ModuleType) and value.__name__.startswith("edge."))
    }
    assert public - set(edge.__all__) == {"annotations"}  # from __future__


def test_every_module_declares_all_and_imports() -> None:
    for info in pkgutil.walk_packages(edge.__path__, "edge."):
        if info.name in ("edge.__main__",):
            continue
        module = importlib.import_module(info.name)
        if info.name == "edge.dbc":
            continue
        assert isinstance(getattr(module, "__all__", None), list), info.name
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.{name}"


def test_version_is_set() -> None:
    assert edge.__version__
