"""The `idp` command, run as a person would, in a scratch folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DB_KIND

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tmp_path, database_url):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        {
            "IDP_DATABASE_URL": database_url,
            "IDP_PASSWORDS__ARGON2_MEMORY_KIB": "64",
            "IDP_PASSWORDS__ARGON2_TIME_COST": "1",
            "PYTHONPATH": str(ROOT),
        }
    )

    def _run(
        *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "idp.cli", *args],
            cwd=tmp_path,
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return _run


def test_init_creates_private_keys_and_the_schema(run, tmp_path):
    result = run("init")
    assert result.returncode == 0, result.stderr
    made = list((tmp_path / "keys").iterdir())
    # Four private keys (secret, signing, encryption, SAML) and the SAML
    # certificate, which is public.
    keys = [k for k in made if k.suffix != ".crt"]
    assert len(keys) == 4 and len(made) == 5
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    again = run("init")
    assert again.returncode == 0 and "created key" not in again.stdout


def test_workspace_and_admin_link(run):
    assert run("init").returncode == 0
    created = run("workspace", "create", "Acme Corp")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "acme-corp"
    second = run("workspace", "create", "Acme Corp")
    assert second.stdout.strip() == "acme-corp-2"
    admin = run("admin", "create", "--workspace", "acme-corp", "Boss@Acme.test")
    assert admin.returncode == 0, admin.stderr
    link = admin.stdout.strip()
    assert link.startswith("http://localhost:8000/invite/") and len(link) > 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["admin", "create", "--workspace", "nope", "a@b.example"],
            "no workspace 'nope'",
        ),
        (["admin", "create", "--workspace", "acme", "not-an-email"], "valid email"),
        (["workspace", "create", "   "], "1 to 200 characters"),
        (["serve", "--port", "0"], "--port"),
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--port", "70000"], "--port"),
        (["frobnicate"], "invalid choice"),
        (["admin", "create", "a@b.example"], "--workspace"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message(run, args, message):
    assert run("init").returncode == 0
    assert run("workspace", "create", "Acme").returncode == 0
    result = run(*args)
    assert result.returncode != 0
    assert message in result.stderr


def test_unknown_idp_variable_stops_start_up(run):
    result = run("init", extra_env={"IDP_PUBLIC_ULR": "http://x"})
    assert result.returncode == 2
    assert "IDP_PUBLIC_ULR" in result.stderr


@pytest.mark.skipif(
    DB_KIND != "sqlite", reason="packaging does not depend on the database"
)
def test_wheel_carries_defaults_migrations_templates_and_static(tmp_path):
    out = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("portcullis-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in [
        "idp/defaults.toml",
        "idp/gunicorn_conf.py",
        "idp/data/common-passwords.txt",
        "idp/migrations/env.py",
        "idp/migrations/versions/0001_initial_schema.py",
        "idp/templates/base.html",
        "idp/templates/portal/users.html",
        "idp/templates/mail/invitation.txt",
        "idp/static/app.css",
        "idp/static/vendor/pico/pico.min.css",
        "policies/runner.py",
        "connectors/mail.py",
    ]:
        assert required in names, required
