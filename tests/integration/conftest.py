"""Fixtures shared by the integration tests: the operator's CLI run in this
process, and a recording upstream for the gateway and reverse-proxy tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_reverse_proxy import Upstream, _running_upstream


@pytest.fixture
def idp(app, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """Run `idp ARGS...` in this process against the test application;
    returns the exit code, standard output and standard error."""
    from idp import cli

    monkeypatch.setattr(cli, "_app", lambda: app)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse refusing the arguments
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A recording upstream app on loopback."""
    with _running_upstream() as running:
        yield running
