"""``python -m edge`` is ``can-telemetry``."""

from edge.cli import main

raise SystemExit(main())
