"""Shared test fixtures. Fixture modules live in tests/support and are registered here."""

pytest_plugins = [
    "tests.support.mosquitto",
    "tests.support.iothub",
    "tests.support.lake",
    "tests.support.smallfs",
    "tests.support.diagnostics",
]


def pytest_configure(config: object) -> None:
    """Keep the DBC cache of the test run out of the user's ~/.cache."""
    import os
    import tempfile

    os.environ.setdefault(
        "CAN_TELEMETRY_CACHE_DIR", tempfile.mkdtemp(prefix="can-telemetry-test-cache-")
    )
