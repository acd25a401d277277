"""The transactional outbox: `sagaz.outbox.add(session, topic, payload, ...)`."""

from sagaz.outbox.events import CORRELATION_HEADER, add

__all__ = ["CORRELATION_HEADER", "add"]
