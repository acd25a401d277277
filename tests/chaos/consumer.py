"""The chaos test's consumer process: reads the published events from NATS JetStream
into PostgreSQL, exactly once, through sagaz's consumer inbox.

    python -m tests.chaos.consumer DATABASE_URL NATS_URL STREAM DURABLE

Each fetched batch is processed in one transaction - per message its `chaos_consumed` row
and its inbox row (`process_once`) - and acknowledged only after that commit. Messages
whose transaction failed (the database restarting) are not acknowledged: JetStream
delivers them again. A process killed between the commit and
the ack sees its messages again in its successor, which the inbox skips. Repeats skipped
are counted in `chaos_inbox_skips`.

This is the harness's own consumer loop (a transaction per fetched batch, counting
redeliveries and inbox skips for the ledger), not sagaz's `NatsConsumer`
(`sagaz.outbox.consumers`), which keeps the same contract - ack only after the commit -
and has its own kill test (tests/inbox/test_inbox_consumer_kill.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import sqlalchemy as sa
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sagaz.outbox.brokers.nats import fetch, message_id_of
from sagaz.outbox.inbox import process_once
from sagaz.store.engines import create_async_engine
from tests.chaos.chaos_sagas import consumed, inbox_skips

CONSUMER = "chaos-consumer"
#: Seconds JetStream waits for an ack before delivering a message again: longer than a
#: batch takes on a loaded machine, or messages still being processed come back.
ACK_WAIT = 10.0


def durable_config(durable: str) -> ConsumerConfig:
    """The durable pull consumer the test creates before starting this process."""
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ACK_WAIT,
        max_deliver=-1,
        max_ack_pending=2000,
    )


async def handle_batch(sessions: async_sessionmaker[AsyncSession], batch: list[Msg]) -> None:
    """Process `batch` in one transaction (each message through the inbox), then ack it.

    If the transaction fails (the database is away), nothing is acknowledged: JetStream
    delivers the messages again.
    """
    repeats: list[str] = []
    try:
        async with sessions() as session, session.begin():
            for msg in batch:
                message_id = message_id_of(msg)
                row = {
                    "message_id": message_id,
                    "pid": os.getpid(),
                    "deliveries": msg.metadata.num_delivered,
                }

                async def write(
                    row: dict[str, object] = row, session: AsyncSession = session
                ) -> None:
                    await session.execute(sa.insert(consumed).values(**row))

                if not await process_once(session, CONSUMER, message_id, write):
                    repeats.append(message_id)
            if repeats:
                await session.execute(
                    sa.insert(inbox_skips), [{"message_id": message_id} for message_id in repeats]
                )
    except Exception as error:
        print(f"consumer: batch of {len(batch)} not processed: {error!r:.200}", flush=True)
        for msg in batch:
            with contextlib.suppress(Exception):
                await msg.nak(delay=0.5)
        await asyncio.sleep(0.2)
        return
    for msg in batch:
        await msg.ack()


async def consume(database_url: str, nats_url: str, stream: str, durable: str) -> None:
    import nats

    engine = create_async_engine(database_url, pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    client = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    subscription = await client.jetstream().pull_subscribe_bind(durable, stream)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    print("consumer ready", flush=True)
    try:
        while not stopping.is_set():
            batch = await fetch(subscription, 50, max_wait=0.2)
            if batch:
                await handle_batch(sessions, batch)
    finally:
        await client.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(consume(*sys.argv[1:5]))
