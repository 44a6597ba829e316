"""The migrations build exactly the schema the models describe."""

import importlib

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from idp import migrate
from idp.db import Base, db
from idp.services import audit_query


def test_models_and_migrations_agree(app_ctx):
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    # The audit search index (FTS5 tables on SQLite, a trigram expression
    # index on PostgreSQL) is made by raw SQL that the models cannot express.
    diff = [
        d
        for d in diff
        if not (d[0] == "remove_table" and d[1].name.startswith("audit_fts"))
        and not (d[0] == "remove_index" and d[1].name == "ix_audit_events_search")
    ]
    assert diff == []


def test_database_is_at_head(app_ctx):
    assert migrate.is_current()


def test_frozen_search_expressions_match_the_query_code():
    initial = importlib.import_module("idp.migrations.versions.0001_initial_schema")
    assert initial.PG_SEARCH_SQL == audit_query.PG_SEARCH_SQL
    assert initial.SQLITE_FTS_COLUMNS == audit_query.SQLITE_FTS_COLUMNS
