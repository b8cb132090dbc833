"""The wire format: payloads, schemas, the codec that writes and reads them. The cloud
side needs this package only (no python-can, no Azure SDK)."""

__all__: list[str] = []
