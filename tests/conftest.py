"""Shared test fixtures. Fixture modules live in tests/support and are registered here."""

pytest_plugins = ["tests.support.mosquitto", "tests.support.iothub"]
