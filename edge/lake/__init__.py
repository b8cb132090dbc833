"""The cloud half: payloads from IoT Hub (message routing Avro, Event Hubs Capture Avro, the
``file`` uplink's outbox) decoded once and only once into Parquet tables (docs/lake.md).

One decode function (:func:`edge.lake.arrow.decode`, an Arrow batch of payloads to Arrow batches
of rows) serves the single-machine ``can-telemetry lake ingest`` (:mod:`edge.lake.local`) and the
Spark jobs (:mod:`edge.lake.spark`, inside ``mapInArrow``). Nothing here imports python-can or
azure-iot-device: install with ``pip install can-telemetry[lake]``.
"""

from __future__ import annotations

__all__ = ["WATERMARK"]

#: The streaming job's event-time watermark (on the hub's arrival time): how long the stateful
#: deduplication remembers a (stream, seq). Wider than the spool's TTL as deployed (7 days,
#: deployment.template.json): docs/lake.md says why, and what gets past it (tests/lake/test_init.py
#: ties the two numbers).
WATERMARK = "8 days"
