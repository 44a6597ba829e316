"""The Audit logs tab's query plans on ~200k events: each query uses the
index meant for it (see explain_audit.py, which prints the plans)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import DB_KIND
from tests.perf.explain_audit import run

EVENTS = int(os.environ.get("PORTCULLIS_BENCH_PLAN_EVENTS", "200000"))


@pytest.mark.timeout(600)
def test_audit_queries_use_their_indexes():
    results = run(DB_KIND, EVENTS)
    missing = [case.name for case, _plan, used in results if not used]
    assert not missing, f"queries without their index on {DB_KIND}: {missing}"
