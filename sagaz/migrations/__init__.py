"""sagaz's Alembic environment and revisions (shipped in the wheel).

Run them with `sagaz db upgrade`, `sagaz.store.migrations.upgrade(url)`, or, from a
repository checkout, `alembic upgrade head` (alembic.ini at the root points here).
"""
