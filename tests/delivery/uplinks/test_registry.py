"""The uplink registry: built-ins, lazy imports, and a real entry-point plugin on sys.path."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config.model import parse_config
from edge.delivery.uplinks import BACKENDS, available_uplinks, uplink_class
from edge.delivery.uplinks.base import Uplink, UplinkOptions
from edge.delivery.uplinks.file import FileUplink
from edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_built_ins_are_available() -> None:
    assert {"file", "mqtt", "azure-edge", "azure-device"} <= set(available_uplinks())
    assert available_uplinks() == sorted(available_uplinks())


def test_file_uplink_class() -> None:
    assert uplink_class("file") is FileUplink


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_built_in_follows_the_convention(kind: str) -> None:
    module_name, _ = BACKENDS[kind]
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} is not written yet")
    cls = uplink_class(kind)
    assert issubclass(cls, Uplink) and cls.kind == kind
    assert callable(getattr(cls, "parse_options", None))
    assert callable(getattr(cls, "from_options", None))
    assert issubclass(cls.Options, UplinkOptions)  # its options declared once


def test_unknown_kind_names_the_field_and_the_known_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        uplink_class("carrier-pigeon")
    assert info.value.field == "uplink.type"
    assert "carrier-pigeon" in info.value.reason
    assert "azure-device, azure-edge, file, mqtt" in info.value.reason


def test_importing_the_registry_imports_no_uplink() -> None:
    code = (
        "import sys, edge.delivery.uplinks;"
        " print(sorted(m for m in sys.modules if 'uplinks.' in m))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['edge.delivery.uplinks.base']"


PLUGIN = textwrap.dedent(
    """
    from edge.delivery.uplinks.base import Uplink, UplinkOptions

    class EchoUplink(Uplink):
        kind = "echo"

        @classmethod
        def parse_options(cls, table, field):
            return dict(table)

        @classmethod
        def from_options(cls, options):
            return cls()

        def send(self, payload, timeout):
            pass

    class HalfUplink(Uplink):
        kind = "half"

        def send(self, payload, timeout):
            pass

    class NotAnUplink:
        pass
    """
)

ENTRY_POINTS = """\
[can_telemetry.uplinks]
echo = ct_test_plugin:EchoUplink
half = ct_test_plugin:HalfUplink
bogus = ct_test_plugin:NotAnUplink
broken = ct_test_plugin_missing:Thing
file = ct_test_plugin:EchoUplink
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installed third-party package: a module plus a dist-info with entry points."""
    (tmp_path / "ct_test_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "ct_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ct-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("ct_test_plugin", None)


@pytest.mark.usefixtures("plugin")
def test_entry_point_plugin_is_listed_and_loaded() -> None:
    assert {"echo", "half", "bogus", "broken", "file"} <= set(available_uplinks())
    echo = uplink_class("echo")
    assert echo.kind == "echo" and issubclass(echo, Uplink)


@pytest.mark.usefixtures("plugin")
def test_built_ins_win_over_plugins_of_the_same_name() -> None:
    assert uplink_class("file") is FileUplink


@pytest.mark.usefixtures("plugin")
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bogus", "not an Uplink subclass"),
        ("broken", "cannot be loaded"),
    ],
)
def test_bad_plugins_are_configuration_errors(kind: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        uplink_class(kind)
    assert info.value.field == "uplink.type"


@pytest.mark.usefixtures("plugin")
def test_a_plugin_without_options_is_refused_when_configured() -> None:
    # The registry no longer checks which methods a class overrides (issue 15): the base class
    # reads the options from the class's Options, and a class that has none cannot be
    # configured. Before, uplink_class refused it ("lacks parse_options and from_options").
    bus = {"name": "can0", "dbc": str(REPO / "dbc" / "demo_vehicle.dbc")}
    with pytest.raises(ConfigError, match=r"'half' .*declares no Options") as info:
        parse_config({"buses": [bus], "uplink": {"type": "half"}})
    assert info.value.field == "uplink.type"


@pytest.mark.usefixtures("plugin")
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bogus", "not an Uplink subclass"),
        ("broken", "cannot be loaded"),
        ("carrier-pigeon", "unknown uplink 'carrier-pigeon'; known: azure-device, azure-edge"),
    ],
)
def test_bad_plugins_are_refused_when_configured(kind: str, reason: str) -> None:
    # The configuration reads a plugin's options through its entry point
    # (edge/config/uplinks.py), without the registry: the same errors, on the same field.
    bus = {"name": "can0", "dbc": str(REPO / "dbc" / "demo_vehicle.dbc")}
    with pytest.raises(ConfigError, match=reason) as info:
        parse_config({"buses": [bus], "uplink": {"type": kind}})
    assert info.value.field == "uplink.type"


@pytest.mark.usefixtures("plugin")
def test_a_plugins_own_parse_options_reads_its_table() -> None:
    bus = {"name": "can0", "dbc": str(REPO / "dbc" / "demo_vehicle.dbc")}
    config = parse_config({"buses": [bus], "uplink": {"type": "echo", "anything": 1}})
    assert (config.uplink.kind, config.uplink.options) == ("echo", {"anything": 1})
