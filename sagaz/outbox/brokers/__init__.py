"""Outbox brokers: one module per broker, each importing its client only inside itself.

`broker_from_url(url)` picks the module by URL scheme.
"""

from sagaz.outbox.brokers.base import MESSAGE_ID_HEADER, Broker, OutboxMessage

__all__ = ["MESSAGE_ID_HEADER", "Broker", "OutboxMessage"]
