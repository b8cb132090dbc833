"""Where the files shipped with the package are: the bundled databases and VSS mappings.

The repository's top-level ``dbc/`` folder is installed as the package ``edge.dbc``; in a
source tree (no install) the files are read from ``dbc/`` itself. Everything that needs a
bundled file (the simulator, the demo, the twin's database lookup, the VSS mappings) asks here,
so no runtime module has to import the simulator to find them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DEMO_DBC", "OBD2_DBC", "bundled_databases_dir", "bundled_mappings_dir"]

_SOURCE_TREE_DBC = Path(__file__).resolve().parents[1] / "dbc"


def _packaged_file(package: str, name: str, fallback: Path) -> Path:
    """``name`` inside an installed ``package`` if it is there as a real file, else ``fallback``."""
    try:
        candidate = resources.files(package) / name
    except ModuleNotFoundError:
        return fallback
    return candidate if isinstance(candidate, Path) and candidate.is_file() else fallback


#: The demo car's database: ``edge.dbc`` when installed, the repository's ``dbc/`` otherwise.
DEMO_DBC: Path = _packaged_file(
    "edge.dbc", "demo_vehicle.dbc", _SOURCE_TREE_DBC / "demo_vehicle.dbc"
)
#: CSS Electronics' OBD-II database (MIT, dbc/README.md): decodes the answers to mode 01 requests.
OBD2_DBC: Path = _packaged_file("edge.dbc", "obd2_css.dbc", _SOURCE_TREE_DBC / "obd2_css.dbc")


def bundled_databases_dir() -> Path:
    """The folder of the databases shipped with the package (``edge.dbc``, or the repository's
    ``dbc/`` in a source tree)."""
    return DEMO_DBC.parent


def bundled_mappings_dir() -> Path:
    """The VSS mappings shipped with the package: ``vss/`` beside the bundled databases (the
    repository's ``dbc/vss/``, installed as part of ``edge.dbc``)."""
    return DEMO_DBC.parent / "vss"
