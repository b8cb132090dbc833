"""The Uplink base class: its options are its ``Options`` class (edge/config/uplinks.py reads
them), and it is built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest

from edge.config.uplinks import Rule, UplinkOptions
from edge.delivery.uplinks.base import Uplink
from edge.errors import ConfigError
from edge.wire.payload import Payload


@dataclass(frozen=True, slots=True)
class SampleOptions(UplinkOptions):
    host: str
    port: Annotated[int, Rule(min=1, max=65535)] = 1883


class SampleUplink(Uplink):
    """An uplink that keeps what it is sent (to test the base class, not a stand-in)."""

    kind = "sample"
    Options = SampleOptions

    def __init__(self, options: SampleOptions) -> None:
        self.options = options
        self.sent: list[Payload] = []

    def send(self, payload: Payload, timeout: float) -> None:
        self.sent.append(payload)


def test_options_class_parse_is_the_uplinks_parse_options() -> None:
    table = {"host": "h", "port": 1}
    assert SampleOptions.parse(table, "u") == SampleUplink.parse_options(table, "u")


def test_from_options_builds_the_uplink_with_its_options() -> None:
    options = SampleUplink.parse_options({"host": "h"}, "uplink")
    uplink = SampleUplink.from_options(options)
    assert isinstance(uplink, SampleUplink) and uplink.options is options


def test_an_uplink_without_options_cannot_be_configured() -> None:
    class Bare(Uplink):
        kind = "bare"

        def send(self, payload: Payload, timeout: float) -> None:
            pass

    with pytest.raises(ConfigError) as info:
        Bare.parse_options({}, "uplink")
    assert info.value.field == "uplink.type"
    assert "'bare'" in info.value.reason and "declares no Options" in info.value.reason
