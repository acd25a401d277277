"""The relay's claim statement and its companion, the deferral of blocked events.

Both read a bounded **window** - the `window` oldest due, unclaimed pending events, in
the order of the partial index `ix_sagaz_outbox_pending` (`next_attempt_at, seq`) - and
never the backlog behind it, so their cost depends on the batch size, not on how many
events are pending (on PostgreSQL the caller also switches off plans that would read
every pending row: see `claims.claim_batch`).

Per-key order rests on one rule: an event with a key is claimed only as the *head* of
its key (its first pending event, whatever that one's state) or as a *follower* of a head
claimed in the same statement (every pending event of the key between the head and it is
due and unclaimed too). From the window:

* unkeyed events are heads of their own;
* for each key in the window, its head is looked up with one index probe
  (`ix_sagaz_outbox_pending_key`, first pending `seq` of the key) and is a candidate when
  it is due and unclaimed - even if it lies outside the window;
* the candidates are locked `FOR UPDATE SKIP LOCKED` (PostgreSQL), oldest first, up to
  `limit`; a relay that skips a locked head claims nothing of its key;
* followers fill the room the heads left: the next pending events of each claimed head's
  key, in `seq` order, up to the first one that is not ready; at most `room` in all.

An event behind a head that backs off (due later, unclaimed) cannot go before it: the
deferral moves such events of the window to their head's next attempt time, so they
leave the window instead of filling it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import NamedFromClause

from sagaz.store.schema import Timestamp, outbox

PENDING = "pending"


def _now(name: str = "now") -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=Timestamp)


def unclaimed(table: sa.FromClause, now: ColumnElement[Any]) -> ColumnElement[bool]:
    return sa.or_(table.c.claim_expires_at.is_(None), table.c.claim_expires_at <= now)


def ready(table: sa.FromClause, now: ColumnElement[Any]) -> ColumnElement[bool]:
    return sa.and_(table.c.next_attempt_at <= now, unclaimed(table, now))


def pending(table: NamedFromClause, dialect: str) -> ColumnElement[bool]:
    """`status = 'pending'` for a row found by seq: on SQLite written `+status` so the
    planner, which has no statistics, does not read every pending row through the
    status index instead of the primary key."""
    if dialect == "sqlite":
        return sa.literal_column(f"+{table.name}.status", sa.String()) == PENDING
    return table.c.status == PENDING


def _window(now: ColumnElement[Any], dialect: str) -> sa.CTE:
    if dialect == "sqlite":
        # Without statistics SQLite prefers the status index and a sort of every pending
        # row; name the index that serves the order and stops at the window.
        return (
            sa.text(
                "SELECT seq, key FROM sagaz_outbox INDEXED BY ix_sagaz_outbox_pending "
                "WHERE status = 'pending' AND next_attempt_at <= :now "
                "AND (claim_expires_at IS NULL OR claim_expires_at <= :now) "
                "ORDER BY next_attempt_at, seq LIMIT :window"
            )
            .bindparams(
                sa.bindparam("now", type_=Timestamp), sa.bindparam("window", type_=sa.Integer())
            )
            .columns(outbox.c.seq, outbox.c.key)
            .cte("win")
        )
    win = outbox.alias("win_scan")
    return (
        sa.select(win.c.seq, win.c.key)
        .where(win.c.status == PENDING)
        .where(ready(win, now))
        .order_by(win.c.next_attempt_at, win.c.seq)
        .limit(sa.bindparam("window", type_=sa.Integer()))
        .cte("win")
    )


def _key_heads(win: sa.CTE) -> sa.CTE:
    """Each key of the window with the seq of its first pending event (one probe a key)."""
    keys = sa.select(win.c.key).where(win.c.key.is_not(None)).distinct().subquery("keys")
    first = outbox.alias("first_pending")
    head_seq = (
        sa.select(first.c.seq)
        .where(first.c.status == PENDING)
        .where(first.c.key == keys.c.key)
        .order_by(first.c.seq)
        .limit(1)
        .scalar_subquery()
    )
    return sa.select(keys.c.key, head_seq.label("head_seq")).cte("key_heads")


def claim_statement(dialect: str) -> sa.Update:
    """The claim of one batch: `UPDATE ... WHERE seq IN (heads and followers) RETURNING`.

    Parameters: `now`, `owner`, `expires` (the claim's expiry), `limit` and `window`
    (how many due events are looked at; at least `limit`).
    """
    now = _now()
    limit = sa.bindparam("limit", type_=sa.Integer())
    win = _window(now, dialect)
    key_heads = _key_heads(win)
    candidates = sa.union(
        sa.select(win.c.seq).where(win.c.key.is_(None)),
        sa.select(key_heads.c.head_seq.label("seq")),
    ).subquery("candidates")
    head = outbox.alias("head")
    if dialect == "postgresql":
        # The candidates as one array computed once, each found by primary key; the
        # conditions wrapped so that no other index serves them (as `seq IN (...)` with
        # plain conditions the planner, without statistics, read every due event).
        is_candidate: ColumnElement[bool] = head.c.seq == sa.any_(
            sa.func.array(sa.select(candidates.c.seq).scalar_subquery())
        )
        checks = [
            sa.func.coalesce(head.c.status, "") == PENDING,
            sa.func.coalesce(head.c.next_attempt_at, now) <= now,
            unclaimed(head, now),
        ]
    else:
        is_candidate = head.c.seq.in_(sa.select(candidates.c.seq))
        checks = [pending(head, dialect), ready(head, now)]
    heads_query = (
        sa.select(head.c.seq, head.c.key)
        .where(is_candidate)
        .where(*checks)
        .order_by(head.c.next_attempt_at, head.c.seq)
        .limit(limit)
    )
    if dialect == "postgresql":
        heads_query = heads_query.with_for_update(skip_locked=True, of=head)
    heads = heads_query.cte("heads")
    room = limit - sa.select(sa.func.count()).select_from(heads).scalar_subquery()
    followers = (
        _postgresql_followers(heads, room, now)
        if dialect == "postgresql"
        else _chain_followers(heads, limit, now)
    )
    chosen = sa.union_all(sa.select(heads.c.seq), followers)
    if dialect == "postgresql":
        # `seq = ANY(ARRAY(chosen))`: the choice runs once (an InitPlan) and each chosen
        # row is found by primary key. As `seq IN (chosen)` the planner (no statistics)
        # scanned every pending row and re-ran the choice for each - O(backlog x batch),
        # seconds on a few thousand pending events of a few keys.
        picked = sa.select(chosen.subquery("chosen").c.seq)
        target: ColumnElement[bool] = outbox.c.seq == sa.any_(
            sa.func.array(picked.scalar_subquery())
        )
    else:
        target = outbox.c.seq.in_(chosen)
    # Re-checked by PostgreSQL against the latest row version before the update; on
    # PostgreSQL written so that no index serves it, leaving the primary key to find
    # the chosen rows (the status index would read every pending row).
    still_pending = (
        sa.func.coalesce(outbox.c.status, "") == PENDING
        if dialect == "postgresql"
        else pending(outbox, dialect)
    )
    return (
        sa.update(outbox)
        .where(still_pending)
        .where(unclaimed(outbox, now))
        .where(target)
        .values(claim_owner=sa.bindparam("owner"), claim_expires_at=_now("expires"))
        .returning(
            outbox.c.seq,
            outbox.c.id,
            outbox.c.topic,
            outbox.c.key,
            # As text, decoded per row by the caller: one unreadable row fails alone.
            sa.cast(outbox.c.payload, sa.Text()).label("payload"),
            sa.cast(outbox.c.headers, sa.Text()).label("headers"),
            outbox.c.attempts,
            outbox.c.next_attempt_at,
            outbox.c.created_at,
            outbox.c.saga_id,
        )
    )


def _postgresql_followers(
    heads: sa.CTE, room: ColumnElement[Any], now: ColumnElement[Any]
) -> sa.Select[Any]:
    """Per head, the next `room` pending events of its key (an index range scan), kept up
    to the first one that is not ready; the outer LIMIT stops the loop over the heads as
    soon as the room is full."""
    nxt = outbox.alias("nxt")
    upcoming = (
        sa.select(nxt.c.seq, ready(nxt, now).label("ready"))
        .where(nxt.c.status == PENDING)
        .where(nxt.c.key == heads.c.key)
        .where(nxt.c.seq > heads.c.seq)
        .order_by(nxt.c.seq)
        .limit(room)
        .correlate(heads)  # inside the LATERAL below: one bounded index scan per head
        .subquery("upcoming")
    )
    run = sa.select(
        upcoming.c.seq,
        sa.func.bool_and(upcoming.c.ready).over(order_by=upcoming.c.seq).label("unbroken"),
    ).subquery("run")
    chain = sa.select(run.c.seq).where(run.c.unbroken).lateral("chain")
    return (
        sa.select(chain.c.seq)
        .select_from(heads.join(chain, sa.true()))
        .where(heads.c.key.is_not(None))
        .limit(room)
    )


def _chain_followers(
    heads: sa.CTE, limit: ColumnElement[Any], now: ColumnElement[Any]
) -> sa.Select[Any]:
    """The same followers without LATERAL (SQLite): a recursive walk from each head to
    the next pending event of its key, one index probe a step, while each is ready. The
    LIMIT of the recursive query ends the walk once heads and followers reach `limit`
    (SQLite stops recursing there); each chain stays a prefix of its key."""
    step = outbox.alias("step")
    chain = sa.select(heads.c.seq, heads.c.key).cte("chain", recursive=True)
    following = (
        sa.select(step.c.seq)
        .where(step.c.status == PENDING)
        .where(step.c.key == chain.c.key)
        .where(step.c.seq > chain.c.seq)
        .order_by(step.c.seq)
        .limit(1)
        .scalar_subquery()
    )
    link = outbox.alias("link")
    chain = chain.union_all(
        sa.select(link.c.seq, link.c.key)
        .select_from(chain.join(link, link.c.seq == following))
        .where(chain.c.key.is_not(None))
        .where(pending(link, "sqlite"))
        .where(ready(link, now))
    )
    # SQLAlchemy has no spelling for a LIMIT on the recursive compound itself.
    compound = chain.element
    assert isinstance(compound, sa.CompoundSelect)
    chain.element = compound.limit(limit)
    return sa.select(chain.c.seq).where(chain.c.seq.not_in(sa.select(heads.c.seq)))


def defer_statement(dialect: str) -> sa.Update:
    """Move the window's events that wait behind a head backing off (unclaimed, due
    later) to that head's next attempt time; returns their seqs.

    Parameters: `now` and `window`. Rows another relay has locked are skipped
    (PostgreSQL). Safe at any time: such an event could not be claimed before its head.
    """
    now = _now()
    win = _window(now, dialect)
    key_heads = _key_heads(win)
    head = outbox.alias("blocking_head")
    blocked = (
        sa.select(win.c.seq, head.c.next_attempt_at.label("until"))
        .select_from(
            win.join(key_heads, key_heads.c.key == win.c.key).join(
                head, head.c.seq == key_heads.c.head_seq
            )
        )
        .where(head.c.seq != win.c.seq)
        .where(head.c.next_attempt_at > now)
        .where(unclaimed(head, now))
    )
    if dialect == "postgresql":
        target = outbox.alias("target")
        blocked = (
            blocked.add_columns()  # keep the shape; lock the rows to move, skipping busy ones
            .join(target, target.c.seq == win.c.seq)
            .with_for_update(skip_locked=True, of=target)
        )
    moves = blocked.subquery("moves")
    return (
        sa.update(outbox)
        .where(outbox.c.seq == moves.c.seq)
        .where(pending(outbox, dialect))
        .where(unclaimed(outbox, now))
        .where(outbox.c.next_attempt_at < moves.c.until)
        .values(next_attempt_at=moves.c.until)
        .returning(outbox.c.seq)
    )
