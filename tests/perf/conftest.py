"""Benchmarks run only when asked: ./scripts/bench sets PORTCULLIS_BENCH=1.

Every item under tests/perf is marked ``perf`` and, without that variable,
skipped before any of its (expensive) fixtures are built.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    enabled = os.environ.get("PORTCULLIS_BENCH") == "1"
    skip = pytest.mark.skip(
        reason="benchmark: set PORTCULLIS_BENCH=1 (./scripts/bench does)"
    )
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.perf)
            if not enabled:
                item.add_marker(skip)
