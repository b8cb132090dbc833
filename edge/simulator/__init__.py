"""A simulated vehicle (and its diagnostic ECUs), for the demo and the tests."""

__all__: list[str] = []
