"""Query plans of the Audit logs tab on a realistic log.

    python -m tests.perf.explain_audit [--events 200000] [--db sqlite|postgresql|both]

Fills a scratch database with events, runs each query exactly as the tab
does (the SQL is captured from ``audit_query.page``), and prints EXPLAIN
QUERY PLAN (SQLite) or EXPLAIN ANALYZE (PostgreSQL) for it, with a check
that the index meant for that query is the one used. tests/perf/
test_explain_audit.py runs the same under ./scripts/bench.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa

from tests.perf._support import (
    START,
    Scratch,
    create_workspaces,
    event_rows,
    insert_events,
    raw_sql,
    report,
    scratch_database,
)

PAGE_SIZE = 50


@dataclass(frozen=True)
class Case:
    name: str
    args: dict[str, str]
    # Text that must appear in each database's plan; empty where either
    # plan is a fair choice for the planner.
    sqlite_needs: tuple[str, ...]
    postgresql_needs: tuple[str, ...]
    # "large": the workspace holding 90% of the log; "small": one with ~1%.
    workspace: str = "large"


WS_INDEX = "ix_audit_events_workspace_id_id"


def cases(deep_before: int, day: date) -> list[Case]:
    week = START.date() + timedelta(days=7)
    return [
        # In the workspace that owns nearly every row, PostgreSQL may walk
        # the primary key backwards instead: it discards only the other
        # workspaces' few rows, so both plans read ~50 rows.
        Case("first page", {}, (f"USING INDEX {WS_INDEX}",), ()),
        Case(
            "first page, small workspace",
            {},
            (f"USING INDEX {WS_INDEX}",),
            (f"Index Scan Backward using {WS_INDEX}",),
            "small",
        ),
        Case(
            "page via before cursor",
            {"before": str(deep_before)},
            (f"USING INDEX {WS_INDEX}",),
            (),
        ),
        Case(
            "page via before cursor, small workspace",
            {"before": str(deep_before)},
            (f"USING INDEX {WS_INDEX}",),
            (f"Index Scan Backward using {WS_INDEX}",),
            "small",
        ),
        Case(
            "free text, rare (user0042@)",
            {"q": "user0042@"},
            ("audit_fts VIRTUAL TABLE INDEX",),
            # PostgreSQL's choice follows its estimate from the indexed
            # expression's histogram: see rare_term_survey.
            (),
        ),
        Case(
            "free text, rare, small workspace",
            {"q": "user0042@"},
            ("audit_fts VIRTUAL TABLE INDEX",),
            ("ix_audit_events_search",),
            "small",
        ),
        Case(
            "free text, common (signin.fail)",
            {"q": "signin.fail"},
            ("audit_fts VIRTUAL TABLE INDEX",),
            (),
        ),
        Case(
            "free text, common, small workspace",
            {"q": "signin.fail"},
            ("audit_fts VIRTUAL TABLE INDEX",),
            (),
            "small",
        ),
        Case(
            "free text, common, via before cursor",
            {"q": "signin.fail", "before": str(deep_before)},
            ("audit_fts VIRTUAL TABLE INDEX",),
            (),
        ),
        Case(
            "free text and action (signin.fail, signin.failure)",
            {"q": "signin.fail", "action": "signin.failure"},
            ("audit_fts VIRTUAL TABLE INDEX",),
            (),
        ),
        Case(
            "action filter (user.disable)",
            {"action": "user.disable"},
            ("ix_audit_events_workspace_id_action_id",),
            ("ix_audit_events_workspace_id_action_id",),
        ),
        Case(
            f"date range, one day ({day})",
            {"from": day.isoformat(), "to": day.isoformat()},
            ("ix_audit_events_workspace_id_occurred_at",),
            (),
        ),
        Case(
            f"date range, one day ({day}), small workspace",
            {"from": day.isoformat(), "to": day.isoformat()},
            ("ix_audit_events_workspace_id_occurred_at",),
            (),
            "small",
        ),
        Case(
            "date range, from the first day on",
            {"from": START.date().isoformat()},
            (),
            (),
        ),
        Case(
            f"date range, up to the first week (to={week})",
            {"to": week.isoformat()},
            (),
            (),
        ),
    ]


def capture_page_sql(
    scratch_app: Any, workspace_id: uuid.UUID, args: dict[str, str]
) -> tuple[str, Any, float]:
    """The SQL and parameters ``audit_query.page`` sends, and its run time."""
    from idp.db import db
    from idp.services import audit_query
    from idp.web.portal.audit_logs import _cursor

    seen: list[tuple[str, Any]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    with scratch_app.test_request_context():
        sa.event.listen(db.engine, "before_cursor_execute", grab)
        try:
            filters = audit_query.Filters.parse(args)
            started = time.perf_counter()
            audit_query.page(
                workspace_id,
                filters,
                before=_cursor(args.get("before", "")),
                size=PAGE_SIZE,
            )
            elapsed = time.perf_counter() - started
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", grab)
        db.session.remove()
    return seen[-1][0], seen[-1][1], elapsed


def explain(
    scratch: Scratch,
    scratch_app: Any,
    statement: str,
    parameters: Any,
    *,
    analyze: bool = True,
) -> str:
    from idp.db import db

    with scratch_app.app_context():
        connection = db.session.connection()
        if scratch.kind == "sqlite":
            rows = connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters
            ).all()
            depth: dict[int, int] = {0: 0}
            lines = []
            for node, parent, _unused, detail in rows:
                depth[node] = depth.get(parent, 0) + 1
                lines.append("  " * (depth[node] - 1) + detail)
            plan = "\n".join(lines)
        else:
            rows = connection.exec_driver_sql(
                ("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if analyze else "EXPLAIN ")
                + statement,
                parameters,
            ).all()
            plan = "\n".join(row[0] for row in rows)
        db.session.rollback()
        db.session.remove()
    return plan


def run(
    kind: str, count: int, *, out: Any = sys.stdout
) -> list[tuple[Case, str, bool]]:
    """Fill, explain every case, print; returns (case, plan, index used)."""
    results = []
    with scratch_database(kind) as scratch:
        workspaces = create_workspaces(scratch, 10)
        started = time.perf_counter()
        loaded = insert_events(scratch, event_rows(workspaces, count))
        load_time = time.perf_counter() - started
        main, small = workspaces[0], workspaces[1]
        ws_value = main.hex if kind == "sqlite" else main
        ids = raw_sql(
            scratch,
            "SELECT min(id), max(id) FROM audit_events WHERE workspace_id = ?",
            (ws_value,),
        )
        low, high = ids[0]
        # The newest row is the last bulk one (workspaces were made first).
        newest = raw_sql(
            scratch, "SELECT occurred_at FROM audit_events ORDER BY id DESC LIMIT 1"
        )[0][0]
        last_day = date.fromisoformat(str(newest)[:10])
        middle = START.date() + (last_day - START.date()) // 2
        app = scratch.app()
        print(
            f"\n######## {kind}: {loaded} events in 10 workspaces ({load_time:.1f} s to load), "
            f"main workspace ids {low}..{high}, log spans {START.date()}..{last_day}",
            file=out,
        )
        for case in cases(low + (high - low) // 4, middle):
            workspace = main if case.workspace == "large" else small
            statement, parameters, elapsed = capture_page_sql(app, workspace, case.args)
            plan = explain(scratch, app, statement, parameters)
            needs = case.sqlite_needs if kind == "sqlite" else case.postgresql_needs
            used = all(text in plan for text in needs)
            verdict = ("uses " + ", ".join(needs)) if needs else "planner's choice"
            print(
                f"\n--- {case.name}: page() took {elapsed * 1000:.1f} ms; "
                f"{'OK' if used else 'NOT OK'}: {verdict}",
                file=out,
            )
            print(" ".join(statement.split()), file=out)
            print(plan, file=out)
            results.append((case, plan, used))
        rare_term_survey(scratch, app, main, out=out)
        with app.app_context():
            from idp.db import db

            db.engine.dispose()
    return results


def rare_term_survey(
    scratch: Scratch, app: Any, workspace: uuid.UUID, *, out: Any
) -> None:
    """How often a search for one member (about 0.02% of the events) is
    planned with the search index in the large workspace. PostgreSQL walks
    the id index backwards instead whenever the term happens to sit in the
    expression's statistics histogram, which makes it look 1% common."""
    terms = [f"user{n:04d}@" for n in range(0, 5000, 25)]
    index = "audit_fts" if scratch.kind == "sqlite" else "ix_audit_events_search"
    using = 0
    for term in terms:
        statement, parameters, _elapsed = capture_page_sql(app, workspace, {"q": term})
        using += index in explain(scratch, app, statement, parameters, analyze=False)
    print(
        f"\n--- rare-term survey: {using} of {len(terms)} one-member searches in the "
        f"large workspace are planned with {index}, {len(terms) - using} walk the id index "
        "backwards",
        file=out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--db", choices=("sqlite", "postgresql", "both"), default="both"
    )
    args = parser.parse_args(argv)
    kinds = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    failed = []
    for kind in kinds:
        failed += [
            f"{kind}: {case.name}"
            for case, _plan, used in run(kind, args.events)
            if not used
        ]
    report(
        "index check", [("queries without their index", ", ".join(failed) or "none")]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
