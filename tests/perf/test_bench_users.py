"""User search on a workspace of 100,000 members: list_users against a
bare count of the users table, measured in the same run."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.perf._support import (
    create_workspaces,
    insert_users,
    ms,
    report,
    scratch_database,
    timed,
    user_rows,
)

USERS = 100_000
QUERIES = {
    "no query (first 500 by email)": "",
    "one member by username": "grace004242",
    "a job title (most match)": "engineer",
    "phone digits": "44200004242",
    "a name with ü (non-ASCII)": "müller",
    "no match": "zzzz",
    "two characters": "zq",
}


@pytest.mark.timeout(600)
def test_user_search_on_a_large_workspace() -> None:
    from idp.db import db
    from idp.models import Workspace
    from idp.services.users import list_users

    with scratch_database() as scratch:
        workspace_id = create_workspaces(scratch, 1)[0]
        started = time.perf_counter()
        count = insert_users(scratch, user_rows(workspace_id, USERS))
        load_seconds = time.perf_counter() - started
        app = scratch.app()
        with app.app_context():
            workspace = db.session.get(Workspace, workspace_id)
            baseline = timed(
                lambda: db.session.execute(
                    sa.text("SELECT count(*) FROM users")
                ).scalar(),
                repeat=11,
            )
            lines = [
                ("database", scratch.kind),
                ("members", f"{count:,} (inserted in {load_seconds:.1f} s)"),
                ("baseline: SELECT count(*) FROM users", ms(baseline)),
            ]
            for label, query in QUERIES.items():
                found = len(list_users(workspace, query))
                seconds = timed(lambda q=query: list_users(workspace, q), repeat=5)
                lines.append(
                    (
                        f"list_users: {label} ({query!r}, {found} shown)",
                        f"{ms(seconds)} = {seconds / baseline:.1f} x baseline",
                    )
                )
            db.session.remove()
            db.engine.dispose()
    report(f"user search, {USERS:,} members on {scratch.kind}", lines)
