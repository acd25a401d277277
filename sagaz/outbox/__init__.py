"""The transactional outbox: `sagaz.outbox.add(session, topic, payload, ...)`, and on the
consuming side `sagaz.outbox.consume(url, topic, group, handler, sessions)` (imported on
first use, see `sagaz.outbox.consumers`)."""

from typing import TYPE_CHECKING, Any

from sagaz.outbox.events import CORRELATION_HEADER, add

if TYPE_CHECKING:
    from sagaz.outbox.consumers import consume

__all__ = ["CORRELATION_HEADER", "add", "consume"]


def __getattr__(name: str) -> Any:
    # `import sagaz` stays as light as it was: the consumers load when first asked for.
    if name == "consume":
        from sagaz.outbox.consumers import consume

        return consume
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
