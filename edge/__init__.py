"""lampwatch edge agent: sensor drivers, store-and-forward outbox, MQTT 5 link, safety fast path.

Library first: :class:`edge.agent.EdgeAgent` with an :class:`edge.config.EdgeConfig`; the console
script ``lampwatch-edge`` (:mod:`edge.cli`) is a thin composition root around it.
"""

__version__ = "0.1.0"
