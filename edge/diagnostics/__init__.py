"""Diagnostics: OBD-II PIDs, UDS DTCs and DIDs, J1939 DM1 and VIN, requested over ISO-TP (and
J1939 transport) on buses where the ``[diagnostics]`` configuration enables it, their results
sent in the same payload stream (docs/diagnostics.md).

Submodules: ``config`` (the ``[diagnostics]`` table), ``dtc`` (DTC text forms), ``transport``
(ISO-TP channels, exceptions), ``obd``, ``uds``, ``j1939`` (the protocols), ``scheduler`` (one
bus's schedule; its gate uses the campaigns' expression language), ``records`` (what goes into
the stream), ``service`` (every bus; the writer). ``config``, ``dtc`` and ``records`` import
neither can-isotp nor udsoncan.
"""

__all__: list[str] = []
