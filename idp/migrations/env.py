"""Alembic environment: run with the connection idp.migrate hands over, or
with the URL in the Alembic config (for `alembic` run by hand)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

import idp.models  # noqa: F401 - registers every table on Base.metadata
from idp.db import Base

config = context.config
target_metadata = Base.metadata


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        run(conn)
