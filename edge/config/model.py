"""The module's configuration: one TOML file (or the module twin), validated once into frozen
dataclasses. Every component receives only its own slice.

Precedence, lowest to highest: built-in defaults, then the TOML file given with ``--config``,
then command-line options (``--replay``, ``--speed``, ``--vehicle-id``); on IoT Edge the twin's
desired properties (same schema, as JSON) replace the file's content when they carry a
``config`` object. ``vehicle_id`` defaults to ``$IOTEDGE_DEVICEID`` and then the host name.

Every option is documented in docs/configuration.md; ``examples/`` holds working files.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edge.config.campaigns import ALWAYS, CampaignConfig, parse_campaigns
from edge.config.diagnostics import DiagnosticsConfig, parse_diagnostics
from edge.config.files import exists
from edge.config.table import Table
from edge.config.uplinks import parse_uplink_options
from edge.errors import ConfigError

__all__ = [
    "BatchConfig",
    "BusConfig",
    "Config",
    "ForwarderConfig",
    "ReplayConfig",
    "SignalRule",
    "SignalsConfig",
    "SpoolConfig",
    "UplinkConfig",
    "load_config",
    "parse_config",
]

SamplingMode = Literal["every", "on_change", "min_interval"]
Compression = Literal["zstd", "zlib", "none"]
SAMPLING_MODES: tuple[SamplingMode, ...] = ("every", "on_change", "min_interval")
COMPRESSIONS: tuple[Compression, ...] = ("zstd", "zlib", "none")

#: Largest frame queue: a queued frame takes about 210 bytes of memory (measured with
#: tracemalloc), so about 210 MB.
MAX_QUEUE_FRAMES = 1_000_000

#: IoT Hub refuses device-to-cloud messages over 256 KB, counting body and properties.
IOT_HUB_MESSAGE_LIMIT = 256 * 1024


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One CAN bus: where frames come from and which database decodes them."""

    name: str
    interface: str = "virtual"
    channel: str = ""
    bitrate: int | None = None
    fd: bool = False
    data_bitrate: int | None = None
    databases: tuple[str, ...] = ()
    strict: bool = True
    j1939: bool = False
    kernel_filters: bool = True
    receive_own_messages: bool = False
    receive_buffer: int | None = None  # SocketCAN receive buffer, bytes (None: 4 MiB)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Kuksa-format VSS mapping files (edge/vss/mapping.py); a bare name may be a bundled one.
    vss_mapping: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Replay a recorded log instead of reading live buses."""

    path: str
    speed: float | None = 1.0  # None: as fast as possible
    channels: Mapping[str, str] = field(default_factory=dict)  # log channel -> bus name
    loop: bool = False


@dataclass(frozen=True, slots=True)
class SignalRule:
    """Sampling settings for the signals whose ``Message.Signal`` name matches ``match``."""

    match: tuple[str, ...]
    buses: tuple[str, ...] = ()
    mode: SamplingMode = "on_change"
    deadband: float = 0.0
    interval: float = 0.0
    heartbeat: float = 60.0


@dataclass(frozen=True, slots=True)
class SignalsConfig:
    """Which signals are kept, and how they are sampled."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    default: SignalRule = SignalRule(match=("*",))
    rules: tuple[SignalRule, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """How samples are grouped into payloads."""

    max_age: float = 5.0
    max_bytes: int = 200_000
    time_resolution: float = 0.001
    compression: Compression = "zstd"
    compression_level: int = 6
    schema_interval: float = 3600.0


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """The durable local store between batching and sending."""

    path: str = "spool/spool.db"
    max_bytes: int = 1_000_000_000
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    """How the forwarder retries."""

    send_timeout: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """Where payloads go: ``kind`` names a registered uplink; ``options`` is its parsed options
    object (each uplink validates its own table)."""

    kind: str = "file"
    options: Any = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole, validated configuration."""

    vehicle_id: str
    buses: tuple[BusConfig, ...]
    replay: ReplayConfig | None = None
    signals: SignalsConfig = SignalsConfig()
    batch: BatchConfig = BatchConfig()
    spool: SpoolConfig = SpoolConfig()
    forwarder: ForwarderConfig = ForwarderConfig()
    uplink: UplinkConfig = UplinkConfig()
    queue_frames: int = 100_000
    log_level: str = "INFO"
    metrics_port: int | None = None
    base_dir: str = "."
    #: The VSS tree mappings are checked against (None: the bundled VSS 6.0 catalog).
    vss_tree: str | None = None
    #: ``[diagnostics]`` (edge/config/diagnostics.py); empty: listen-only on every bus.
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    #: ``[[campaigns]]`` (edge/config/campaigns.py); ``[signals]`` is the default ``always`` one.
    campaigns: tuple[CampaignConfig, ...] = ()

    def bus(self, name: str) -> BusConfig:
        """The bus called ``name``."""
        for bus in self.buses:
            if bus.name == name:
                return bus
        raise KeyError(name)

    def with_replay(self, replay: ReplayConfig | None) -> Config:
        """A copy with the replay source replaced (command-line ``--replay``)."""
        return replace(self, replay=replay)


def default_vehicle_id() -> str:
    """``$IOTEDGE_DEVICEID`` on IoT Edge, else the host name."""
    return os.environ.get("IOTEDGE_DEVICEID") or socket.gethostname() or "vehicle"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML configuration file. Relative paths inside it (databases, spool,
    outbox, replay log) are resolved against the file's folder."""
    file = Path(path)
    try:
        # utf-8-sig: Windows editors start UTF-8 files with a byte order mark, which TOML refuses
        data = tomllib.loads(file.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ConfigError("", f"cannot read configuration {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{file} is not UTF-8 text: {exc.reason}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{file} is not valid TOML: {exc}") from exc
    return parse_config(data, base_dir=str(file.parent.resolve()))


def parse_config(data: Mapping[str, Any], *, base_dir: str = ".") -> Config:
    """Validate a configuration mapping (from TOML or a twin's JSON)."""
    root = Table(data)
    base = Path(base_dir)

    def resolve(value: str) -> str:
        return os.path.normpath(value if Path(value).is_absolute() else base / value)

    vehicle_id = root.str("vehicle_id", None) or default_vehicle_id()
    buses = tuple(_bus(t, resolve) for t in root.tables("buses"))
    if not buses:
        raise ConfigError("buses", "at least one [[buses]] entry is required")
    names = [b.name for b in buses]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"buses[{i}].name", f"duplicate bus name {name!r}")

    replay = _replay(root.table("replay"), resolve, names) if root.has("replay") else None
    signals = _signals(root.table("signals"), names)
    batch = _batch(root.table("batch"))
    spool = _spool(root.table("spool"), resolve)
    forwarder, uplink = _uplink(root.table("uplink"), resolve)
    queue_frames = root.int("queue_frames", 100_000, min=1000, max=MAX_QUEUE_FRAMES)
    log_level = root.str(
        "log_level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    metrics_port = root.int("metrics_port", None, min=0, max=65535)
    vss_tree = root.str("vss_tree", None)
    diagnostics = parse_diagnostics(root.table("diagnostics"), names)
    campaigns = parse_campaigns(root)
    always = [c for c in campaigns if c.collect == ALWAYS]
    if always:  # the always campaign takes the role of [signals].include
        if "include" in data.get("signals", {}):
            raise ConfigError("signals.include", "set by the 'always' campaign's signals instead")
        signals = replace(signals, include=always[0].signals)
    root.finish()
    topic = getattr(uplink.options, "topic", "")
    if "{vehicle}" in topic and any(c in vehicle_id for c in "/+#\0"):
        raise ConfigError(
            "vehicle_id", f"{vehicle_id!r} cannot be part of the MQTT topic {topic!r} (/, +, #)"
        )
    return Config(
        vehicle_id=vehicle_id,
        buses=buses,
        replay=replay,
        signals=signals,
        batch=batch,
        spool=spool,
        forwarder=forwarder,
        uplink=uplink,
        queue_frames=queue_frames,
        log_level=log_level,
        metrics_port=metrics_port,
        base_dir=str(base),
        vss_tree=resolve(vss_tree) if vss_tree else None,
        diagnostics=diagnostics,
        campaigns=campaigns,
    )


def _bus(t: Table, resolve: Any) -> BusConfig:
    name = t.str("name")
    interface = t.str("interface", "virtual")
    channel = t.str("channel", name)
    bitrate = t.int("bitrate", None, min=1000, max=1_000_000)
    fd = t.bool("fd", False)
    data_bitrate = t.int("data_bitrate", None, min=1000, max=16_000_000)
    if data_bitrate is not None and not fd:
        raise t.error("data_bitrate", "only applies with fd = true")
    databases = t.str_list("dbc", ())
    if not databases:
        raise t.error("dbc", "at least one CAN database file is required")
    config = BusConfig(
        name=name,
        interface=interface,
        channel=channel,
        bitrate=bitrate,
        fd=fd,
        data_bitrate=data_bitrate,
        databases=tuple(resolve(d) for d in databases),
        strict=t.bool("strict", True),
        j1939=t.bool("j1939", False),
        kernel_filters=t.bool("kernel_filters", True),
        receive_own_messages=t.bool("receive_own_messages", False),
        receive_buffer=t.int("receive_buffer", None, min=0, max=1 << 30),
        options=dict(t.table("options").rest()),
        vss_mapping=tuple(_mapping_file(m, resolve) for m in t.str_list("vss_mapping", ())),
    )
    t.finish()
    return config


def _mapping_file(name: str, resolve: Any) -> str:
    """A mapping file's path; a bare name not found beside the configuration stays bare, to be
    looked up among the bundled mappings (dbc/vss/)."""
    path: str = resolve(name)
    return name if "/" not in name and not exists(path) else path


def _replay(t: Table, resolve: Any, bus_names: list[str]) -> ReplayConfig:
    path = resolve(t.str("log"))
    speed = _speed(t, "speed")
    channels: dict[str, str] = {}
    mapping = t.table("channels")
    for log_channel, bus in mapping.rest().items():
        if bus not in bus_names:
            raise ConfigError(mapping.field(log_channel), f"no bus named {bus!r}")
        channels[str(log_channel)] = bus
    loop = t.bool("loop", False)
    t.finish()
    return ReplayConfig(path=path, speed=speed, channels=channels, loop=loop)


def _speed(t: Table, key: str) -> float | None:
    value = t.raw(key, 1.0)
    if value == "max":
        return None
    return float(t.float(key, 1.0, min=0.0, min_exclusive=True))


def parse_speed(text: str) -> float | None:
    """``--speed`` on the command line: a factor (``1``, ``10``, ``0.5``) or ``max``."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError("--speed", f"expected a number or 'max', got {text!r}") from None
    if not value > 0:
        raise ConfigError("--speed", f"must be greater than 0, got {text}")
    return value


def _rule(t: Table, defaults: SignalRule, bus_names: list[str], *, is_default: bool) -> SignalRule:
    match = ("*",) if is_default else t.str_list("match")
    buses: tuple[str, ...] = () if is_default else t.str_list("buses", ())
    for bus in buses:
        if bus not in bus_names:
            raise t.error("buses", f"no bus named {bus!r}")
    mode = t.str("mode", defaults.mode, choices=SAMPLING_MODES)
    interval = t.float("interval", defaults.interval, min=0.0)
    if mode == "min_interval" and interval <= 0:
        raise t.error("interval", "must be greater than 0 with mode = 'min_interval'")
    return SignalRule(
        match=match,
        buses=buses,
        mode=mode,
        deadband=t.float("deadband", defaults.deadband, min=0.0),
        interval=interval,
        heartbeat=t.float("heartbeat", defaults.heartbeat, min=0.0),
    )


def _signals(t: Table, bus_names: list[str]) -> SignalsConfig:
    include = t.str_list("include", ("*",))
    exclude = t.str_list("exclude", ())
    default = _rule(t, SignalRule(match=("*",)), bus_names, is_default=True)
    rules = []
    for rt in t.tables("rules"):
        rules.append(_rule(rt, default, bus_names, is_default=False))
        rt.finish()
    t.finish()
    return SignalsConfig(include=include, exclude=exclude, default=default, rules=tuple(rules))


def _batch(t: Table) -> BatchConfig:
    # Leave room under IoT Hub's limit for the application properties and the protocol envelope.
    limit = IOT_HUB_MESSAGE_LIMIT - 8 * 1024
    config = BatchConfig(
        max_age=t.float("max_age", 5.0, min=0.05, max=3600.0),
        max_bytes=t.int("max_bytes", 200_000, min=4096, max=limit),
        time_resolution=t.float("time_resolution", 0.001, min=1e-6, max=1.0),
        compression=t.str("compression", "zstd", choices=COMPRESSIONS),
        compression_level=t.int("compression_level", 6, min=1, max=19),
        schema_interval=t.float("schema_interval", 3600.0, min=1.0),
    )
    t.finish()
    microseconds = 1e6 * config.time_resolution
    if abs(microseconds - round(microseconds)) > 1e-6:
        raise ConfigError("batch.time_resolution", "must be a whole number of microseconds")
    return config


def _spool(t: Table, resolve: Any) -> SpoolConfig:
    ttl = t.float("ttl", 0.0, min=0.0)
    config = SpoolConfig(
        path=resolve(t.str("path", "spool/spool.db")),
        max_bytes=t.int("max_bytes", 1_000_000_000, min=1_000_000),
        ttl=ttl or None,
    )
    t.finish()
    return config


def _uplink(t: Table, resolve: Any) -> tuple[ForwarderConfig, UplinkConfig]:
    forwarder = ForwarderConfig(
        send_timeout=t.float("send_timeout", 30.0, min=0.1),
        backoff_initial=t.float("backoff_initial", 1.0, min=0.01),
        backoff_max=t.float("backoff_max", 60.0, min=0.01),
    )
    if forwarder.backoff_max < forwarder.backoff_initial:
        raise t.error("backoff_max", "must not be smaller than backoff_initial")
    kind = t.str("type", "file")
    table = t.rest()
    if kind == "file":
        table.setdefault("path", "outbox")
    for key in ("path", "ca_file", "cert_file", "key_file"):
        if isinstance(table.get(key), str):
            table[key] = resolve(table[key])
    options = parse_uplink_options(kind, table, t.path)
    return forwarder, UplinkConfig(kind=kind, options=options)
