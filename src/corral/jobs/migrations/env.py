"""Alembic's entry to the job store schema.

``SqlJobStore.open`` passes its own connection, already inside the transaction that holds the
write lock, as ``config.attributes["connection"]``. A developer making a new revision passes
the URL instead: ``alembic -x url=sqlite:///corral.db revision --autogenerate -m "..."`` with
``script_location = corral.jobs:migrations``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from corral.jobs.sql import Base


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        msg = "Name the job store to migrate: alembic -x url=sqlite:///path/to/corral.db ..."
        raise SystemExit(msg)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


main()
