"""Campaigns: what each car collects, when, at what rate and with what priority.

* :mod:`edge.campaigns.config`: ``[[campaigns]]`` settings, validated once;
* :mod:`edge.campaigns.expression`: conditions, parsed once and compiled into closures;
* :mod:`edge.campaigns.capture`: rings of raw frames and capture windows;
* :mod:`edge.campaigns.engine`: the engine the Processor hands every chunk of frames to.

Nothing is imported here: :mod:`edge.config.model` imports the settings module, which must not pull
in
the engine (which imports :mod:`edge.config.model`).
"""

__all__: list[str] = []
