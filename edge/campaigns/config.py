"""Campaign settings: :mod:`edge.config.campaigns`, where the configuration reads them (the
configuration sits below the stages). Importable from here too, as before the move."""

from edge.config.campaigns import (
    ALWAYS,
    COLLECT_MODES,
    DEFAULT_PRIORITY,
    TRIGGERS,
    CampaignConfig,
    describe,
    field_name,
    parse_campaigns,
)

__all__ = [
    "ALWAYS",
    "COLLECT_MODES",
    "DEFAULT_PRIORITY",
    "TRIGGERS",
    "CampaignConfig",
    "describe",
    "field_name",
    "parse_campaigns",
]
