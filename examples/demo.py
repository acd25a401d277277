"""The sagaz demo: an order saga that completes, and one whose payment fails and is undone.

Run with ``scripts/demo`` (installs sagaz into .venv first) or ``python examples/demo.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sagaz import Saga, SagaResult, action, compensate


class OrderSaga(Saga):
    saga_name = "demo-order"

    @action("reserve_stock")
    async def reserve_stock(self, ctx: Any) -> dict[str, Any]:
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve_stock")
    async def release_stock(self, ctx: Any) -> None:
        print(f"    undo: released reservation {ctx['reservation']}")

    @action("charge_card", depends_on=["reserve_stock"], max_retries=1, retry_backoff=0.01)
    def charge_card(self, ctx: Any) -> dict[str, Any]:  # a plain def step runs in a thread
        if ctx["amount"] > 100:
            raise RuntimeError(f"card declined for {ctx['amount']}")
        return {"payment": f"P-{ctx['order_id']}"}

    @compensate("charge_card")
    def refund_card(self, ctx: Any) -> None:
        print(f"    undo: refunded {ctx['payment']}")

    @action("ship", depends_on=["charge_card"])
    async def ship(self, ctx: Any) -> dict[str, Any]:
        return {"tracking": f"T-{ctx['order_id']}"}


def show(result: SagaResult) -> None:
    print(f"  saga {result.saga_name} {result.saga_id[:8]}: {result.status.value.upper()}")
    for outcome in result.steps.values():
        extra = f" ({outcome.error})" if outcome.error else ""
        print(
            f"    {outcome.name:<14} {outcome.status.value:<12} attempts={outcome.attempts}{extra}"
        )
    if result.error:
        print(f"  first error: {result.error}")


async def main() -> None:
    print("Order 1 (amount 40): every step succeeds")
    show(await OrderSaga().run({"order_id": 1, "amount": 40}))
    print()
    print("Order 2 (amount 500): the charge fails twice, so the reservation is released")
    show(await OrderSaga().run({"order_id": 2, "amount": 500}))
    print()
    print("The saga as a Mermaid graph:")
    print(OrderSaga().to_mermaid())


if __name__ == "__main__":
    asyncio.run(main())
