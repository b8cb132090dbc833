"""Processing: databases, frame decoding, sampling and batching, on one thread."""

__all__: list[str] = []
