"""Diagnostics: OBD-II PIDs, UDS DTCs and DIDs, J1939 DM1 and VIN, requested over ISO-TP (and
J1939 transport) on buses where the ``[diagnostics]`` configuration enables it, their results
sent in the same payload stream (docs/diagnostics.md).

Submodules: ``config`` (the ``[diagnostics]`` table), ``condition`` (gating expressions),
``dtc`` (DTC text forms), ``transport`` (ISO-TP channels, exceptions), ``obd``, ``uds``,
``j1939`` (the protocols), ``scheduler`` (one bus's schedule), ``records`` (what goes into the
stream), ``service`` (every bus; the writer). Only ``config``, ``condition``, ``dtc`` and
``records`` are imported without can-isotp/udsoncan.
"""

__all__: list[str] = []
