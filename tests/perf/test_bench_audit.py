"""Audit logs with a million events: page and export times against a bare
keyset query, and the export's peak memory against the size of its CSV.

PORTCULLIS_BENCH_AUDIT_EVENTS changes the number of events.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from idp.services.audit_query import EXPORT_BATCH
from tests.perf._support import (
    START,
    Scratch,
    create_workspaces,
    event_rows,
    insert_events,
    make_member,
    mib,
    ms,
    raw_sql,
    report,
    rss_bytes,
    scratch_database,
    sign_in,
    timed,
)

EVENTS = int(os.environ.get("PORTCULLIS_BENCH_AUDIT_EVENTS", "1000000"))
PASSWORD = "bench password for the audit log"
FAST_HASH = {"argon2_memory_kib": 64, "argon2_time_cost": 1}


@dataclass
class Log:
    scratch: Scratch
    app: Any
    workspace_id: Any
    events: int
    load_seconds: float


@pytest.fixture(scope="module")
def log() -> Iterator[Log]:
    with scratch_database() as scratch:
        workspaces = create_workspaces(scratch, 10)
        started = time.perf_counter()
        count = insert_events(scratch, event_rows(workspaces, EVENTS))
        load_seconds = time.perf_counter() - started
        app = scratch.app(passwords=FAST_HASH, signin={"ip_limits": "10000 per minute"})
        make_member(app, workspaces[0], "admin@example.com", PASSWORD)
        yield Log(scratch, app, workspaces[0], count, load_seconds)
        from idp.db import db

        with app.app_context():
            db.engine.dispose()


def _page(log: Log, **filters: str) -> Any:
    from idp.services import audit_query

    before = filters.pop("before", None)
    parsed = audit_query.Filters.parse(filters)

    def work() -> Any:
        return audit_query.page(
            log.workspace_id, parsed, before=int(before) if before else None, size=50
        )

    return work


def _export(client: Any) -> tuple[int, int, int]:
    """Download the whole log through the test client, reading the stream
    chunk by chunk as a browser would; (bytes, lines, RSS growth)."""
    response = client.get("/portal/audit-logs/download")
    assert response.status_code == 200 and response.is_streamed
    start_rss = peak_rss = rss_bytes()
    size = lines = 0
    try:
        for n, chunk in enumerate(response.response):
            size += len(chunk)
            lines += chunk.count(b"\r\n")
            if n % 20 == 0:
                peak_rss = max(peak_rss, rss_bytes())
    finally:
        response.close()
    return size, lines, max(peak_rss, rss_bytes()) - start_rss


def _traced_peaks(
    client: Any, checkpoints: tuple[int, ...]
) -> list[tuple[int, int, int]]:
    """tracemalloc's peak at each checkpoint, counted in chunks (the header,
    then one chunk per batch of rows): (chunks, CSV bytes so far, peak). The
    same peak at the first and the last checkpoint shows that memory does
    not grow with the length of the export. Tracing slows Python about six
    times, so only the start of the export is traced, then the client hangs
    up."""
    response = client.get("/portal/audit-logs/download")
    peaks = []
    size = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for n, chunk in enumerate(response.response, start=1):
            size += len(chunk)
            if n in checkpoints:
                peaks.append((n, size, tracemalloc.get_traced_memory()[1]))
            if n >= checkpoints[-1]:
                break
    finally:
        tracemalloc.stop()
        response.close()
    return peaks


@pytest.mark.timeout(900)
def test_audit_log_with_many_events(log: Log) -> None:
    from idp.db import db

    main_ids = raw_sql(
        log.scratch,
        "SELECT min(id), count(*) FROM audit_events WHERE workspace_id = ?",
        (log.workspace_id.hex if log.scratch.kind == "sqlite" else log.workspace_id,),
    )
    oldest, in_workspace = main_ids[0]
    newest = raw_sql(
        log.scratch, "SELECT occurred_at FROM audit_events ORDER BY id DESC LIMIT 1"
    )[0][0]
    middle = START.date() + (date.fromisoformat(str(newest)[:10]) - START.date()) // 2
    first_week = START.date() + timedelta(days=7)
    with log.app.test_request_context():
        baseline = timed(
            lambda: db.session.execute(
                sa.text("SELECT id FROM audit_events ORDER BY id DESC LIMIT 50")
            ).all(),
            repeat=21,
        )
        cases = {
            "first page (unfiltered)": _page(log),
            "page deep in the log (before cursor)": _page(
                log, before=str(oldest + 500)
            ),
            "free text, rare (user0042@)": _page(log, q="user0042@"),
            "free text, common (signin.fail)": _page(log, q="signin.fail"),
            "free text, 2 characters (fallback)": _page(log, q="42"),
            "action filter (user.disable)": _page(log, action="user.disable"),
            f"date range, one day ({middle})": _page(
                log, **{"from": str(middle), "to": str(middle)}
            ),
            f"date range, up to the first week (to={first_week})": _page(
                log, to=str(first_week)
            ),
        }
        times = {name: timed(work, repeat=7) for name, work in cases.items()}
        assert len(cases["free text, rare (user0042@)"]().events) > 0

    client = log.app.test_client()
    sign_in(client, "admin@example.com", PASSWORD)
    page_http = timed(lambda: client.get("/portal/audit-logs"), repeat=7)

    started = time.perf_counter()
    size, lines, rss_growth = _export(client)
    export_seconds = time.perf_counter() - started
    # Every event of the workspace (the admin's sign-in included) plus the header.
    assert lines == in_workspace + 2, (lines, in_workspace)

    peaks = _traced_peaks(client, (11, 51, 101))

    rows: list[tuple[str, str]] = [
        ("database", log.scratch.kind),
        (
            "events loaded",
            (
                f"{log.events:,} ({in_workspace:,} in the measured workspace), "
                f"in {log.load_seconds:.1f} s"
            ),
        ),
        ("baseline: SELECT id ... ORDER BY id DESC LIMIT 50", ms(baseline)),
    ]
    for name, seconds in times.items():
        rows.append((name, f"{ms(seconds)} = {seconds / baseline:.1f} x baseline"))
    rows.append(
        (
            "GET /portal/audit-logs (test client, rendered)",
            f"{ms(page_http)} = {page_http / baseline:.1f} x baseline",
        )
    )
    rows += [
        (
            "CSV export, whole workspace",
            (
                f"{export_seconds:.2f} s = {export_seconds / baseline:,.0f} x baseline; "
                f"{lines - 1:,} rows, {mib(size)}, {(lines - 1) / export_seconds:,.0f} rows/s"
            ),
        ),
        *[
            (
                (
                    f"export peak traced memory, first {n - 1} batches "
                    f"({(n - 1) * EXPORT_BATCH:,} rows)"
                ),
                (
                    f"{mib(peak)} = {peak / csv_size:.1%} of their CSV ({mib(csv_size)}), "
                    f"{peak / size:.2%} of the whole CSV"
                ),
            )
            for n, csv_size, peak in peaks
        ],
        (
            "export RSS growth",
            f"{mib(rss_growth)} = {rss_growth / size:.2%} of the CSV",
        ),
    ]
    report(f"audit log, {log.events:,} events on {log.scratch.kind}", rows)
