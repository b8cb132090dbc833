"""Ingest: CAN frames from buses (python-can, SocketCAN) and recorded logs."""

__all__: list[str] = []
