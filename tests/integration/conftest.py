"""Fixtures shared by the gateway and reverse-proxy tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_reverse_proxy import Upstream, _running_upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A recording upstream app on loopback."""
    with _running_upstream() as running:
        yield running
