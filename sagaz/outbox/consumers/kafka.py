"""Kafka consumer (aiokafka): offsets committed only after the handler's transaction.

The consumer joins consumer group `group` with auto-commit off. After a record's
transaction committed, the offset after it is committed for its partition; a consumer
that crashes before that commit, or whose partitions move to another member, leaves the
record to be delivered again (from the last committed offset), and the inbox skips it
if it was processed. A failed handler rewinds its partition to the failed record
(`seek`) after `retry_delay` seconds: the partition's later records wait behind it, so
per-partition order is kept. An unreadable record is skipped (its offset committed).

There is no Kafka server on the development machine: this module is checked by import,
type checking and reading only; run it against a real broker before relying on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from sagaz._util import requires_extra
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.common import OptionParsers, ReceivedMessage
from sagaz.outbox.brokers.kafka import decode
from sagaz.outbox.consumers.core import BrokerConsumer, Delivery, Handler, Sessions, close_quietly

with requires_extra("kafka", "aiokafka", "The Kafka consumer"):
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["KafkaConsumer"]


@dataclass(slots=True)
class _Record:
    consumer: KafkaConsumer
    raw: Any

    @property
    def partition(self) -> TopicPartition:
        return TopicPartition(self.raw.topic, self.raw.partition)

    def decode(self) -> ReceivedMessage:
        return decode(self.raw)

    async def ack(self) -> None:
        await self.consumer.commit_after(self.partition, self.raw.offset)

    async def retry(self, error: BaseException) -> None:
        self.consumer.rewound.add(self.partition)
        await asyncio.sleep(self.consumer.retry_delay)
        self.consumer.seek(self.partition, self.raw.offset)

    async def reject(self, error: BaseException) -> None:
        await self.ack()


class KafkaConsumer(BrokerConsumer):
    """Consumes Kafka topic `topic` as consumer group `group` (`kafka://host:9092`).

    Options: `batch_size` (100 records per fetch), `fetch_timeout` (1 s),
    `auto_offset_reset` ("earliest": a new group starts at the topic's beginning),
    `consumer_options` (passed to `AIOKafkaConsumer`; auto-commit stays off).
    """

    broker = "kafka"
    url_options: ClassVar[OptionParsers] = {
        "batch_size": int,
        "fetch_timeout": float,
        "auto_offset_reset": str,
    }

    def __init__(
        self,
        url: str,
        topic: str,
        group: str,
        handler: Handler,
        sessions: Sessions,
        *,
        batch_size: int = 100,
        fetch_timeout: float = 1.0,
        auto_offset_reset: str = "earliest",
        consumer_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, topic, group, handler, sessions, **options)
        if batch_size < 1 or fetch_timeout <= 0:
            raise ConfigurationError("kafka consumer: need batch_size >= 1, fetch_timeout > 0")
        self.bootstrap_servers = url.split("://", 1)[-1].partition("?")[0].rstrip("/")
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.options: dict[str, Any] = {
            "auto_offset_reset": auto_offset_reset,
            "client_id": self.name,
            **(consumer_options or {}),
            "enable_auto_commit": False,
        }
        self.rewound: set[TopicPartition] = set()
        self._consumer: AIOKafkaConsumer | None = None

    async def _open(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group,
            **self.options,
        )
        self._consumer = consumer
        await consumer.start()

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_quietly(consumer.stop())

    async def commit_after(self, partition: TopicPartition, offset: int) -> None:
        assert self._consumer is not None
        await self._consumer.commit({partition: offset + 1})

    def seek(self, partition: TopicPartition, offset: int) -> None:
        assert self._consumer is not None
        self._consumer.seek(partition, offset)

    async def _receive(self) -> Iterable[Delivery]:
        assert self._consumer is not None
        self.rewound.clear()
        fetched = await self._consumer.getmany(
            timeout_ms=int(self.fetch_timeout * 1000), max_records=self.batch_size
        )
        return self._in_order(fetched)

    def _in_order(self, fetched: dict[TopicPartition, list[Any]]) -> Iterator[Delivery]:
        """The fetched records, lazily: after a failure rewinds a partition, that
        partition's later records of this fetch are not handed out (they come again)."""
        for partition, records in fetched.items():
            for record in records:
                if partition in self.rewound:
                    break
                yield _Record(self, record)
