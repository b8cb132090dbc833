"""Delivery: the durable spool, the forwarder and the uplinks it sends through."""

__all__: list[str] = []
