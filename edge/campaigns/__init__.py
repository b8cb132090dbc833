"""Campaigns: what each car collects, when, at what rate and with what priority.

* :mod:`edge.config.campaigns`: ``[[campaigns]]`` settings, validated once with the rest of the
  configuration;
* :mod:`edge.campaigns.expression`: conditions, parsed once and compiled into closures;
* :mod:`edge.campaigns.capture`: rings of raw frames and capture windows;
* :mod:`edge.campaigns.engine`: the engine the Processor hands every chunk of frames to.

Nothing is imported here: importing one module of the folder does not import the engine.
"""

__all__: list[str] = []
