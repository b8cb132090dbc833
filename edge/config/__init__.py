"""Configuration: one TOML file or the module twin, validated once into typed objects."""

__all__: list[str] = []
