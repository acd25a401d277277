"""PostgreSQL login roles with limited privileges, for the tests of failures that
retrying cannot fix (a role that may only SELECT, one that may not create tables)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import DatabaseUrls

#: The password every test role gets (the server may trust 127.0.0.1 and ignore it; the
#: tests check it never appears in what sagaz prints).
PASSWORD = "secretpw-9f3c1"


@contextmanager
def limited_role(server_url: str, urls: DatabaseUrls, *grants: str) -> Iterator[str]:
    """A new LOGIN role with USAGE on the test schema and `grants` (statements with
    ``{role}`` and ``{schema}`` placeholders); yields a URL reaching the test schema as
    that role (password included). Its connections are ended and it is dropped after."""
    role = f"sagaz_role_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(make_url(server_url).set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{urls.schema}" TO {role}')
        for grant in grants:
            connection.exec_driver_sql(grant.format(role=role, schema=f'"{urls.schema}"'))
    try:
        yield (
            make_url(urls.url)
            .set(username=role, password=PASSWORD)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                ),
                {"r": role},
            )
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


SELECT_ONLY = "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"
