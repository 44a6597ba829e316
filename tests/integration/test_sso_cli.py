"""`idp domain approve | list | remove`: the operator verifies a company's
email domain for a workspace's SSO connection without the DNS record, sees
every claim, and takes one back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_user, make_workspace, post_form, signed_in
from tests.integration.sso_helpers import add_connection, add_domain, domains_of, events

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app, "Acme")
    add_connection(app, ws)
    return ws


def test_approve_claims_and_verifies(app, idp, acme):
    code, out, err = idp("domain", "approve", "--workspace", "acme", "Acme.Example.")
    assert (code, err) == (0, "")
    assert out == "verified: acme.example for acme (by the operator)\n"
    assert domains_of(app, acme) == [("acme.example", "operator")]
    (event,) = events(app, "sso.domain_verified")
    assert event.actor_type == "operator" and event.details == {"by": "operator"}
    # Again: nothing changes, and it says so the same way.
    assert idp("domain", "approve", "--workspace", "acme", "acme.example")[0] == 0
    assert len(events(app, "sso.domain_verified")) == 1


def test_approve_a_pending_claim(app, idp, acme):
    add_domain(app, acme, "acme.example")
    assert idp("domain", "approve", "--workspace", "acme", "acme.example")[0] == 0
    assert domains_of(app, acme) == [("acme.example", "operator")]


def test_approved_domain_routes_sign_in(app, idp, acme):
    idp("domain", "approve", "--workspace", "acme", "acme.example")
    client = app.test_client()
    response = post_form(client, "/login", {"email": "someone@acme.example"})
    assert response.headers["Refresh"] == "0; url=/sso/saml/acme/start"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workspace", "nope", "acme.example"], "no workspace 'nope'"),
        (["--workspace", "bravo", "bravo.example"], "bravo has no SSO connection"),
        (
            ["--workspace", "acme", "taken.example"],
            "already verified for another workspace",
        ),
        (["--workspace", "acme", "not a domain"], "Enter a domain name"),
    ],
    ids=["no-workspace", "no-connection", "taken", "bad-domain"],
)
def test_approve_refusals(app, idp, acme, args, message):
    make_workspace(app, "Bravo")
    other = make_workspace(app, "Carol")
    add_connection(app, other)
    add_domain(app, other, "taken.example", verified_by="dns")
    code, out, err = idp("domain", "approve", *args)
    assert code == 1 and out == ""
    assert err.startswith("idp: ") and message in err
    assert domains_of(app, acme) == []


def test_list_and_remove(app, idp, acme):
    pending = add_domain(app, acme, "pending.example")
    add_domain(app, acme, "verified.example", verified_by="dns")
    other = make_workspace(app, "Bravo")
    add_connection(app, other)
    add_domain(app, other, "bravo.example", verified_by="operator")

    code, out, _ = idp("domain", "list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["acme", "pending.example"],
        ["acme", "verified.example"],
        ["bravo", "bravo.example"],
    ]
    assert lines[0].endswith(
        "pending: TXT _portcullis.pending.example "
        f"portcullis-domain-verification={pending.verification_token}"
    )
    assert "verified by dns" in lines[1] and "verified by operator" in lines[2]

    code, out, _ = idp("domain", "list", "--workspace", "bravo")
    assert code == 0 and len(out.splitlines()) == 1

    code, out, err = idp("domain", "remove", "--workspace", "acme", "verified.example")
    assert (code, err) == (0, "")
    assert out == "removed: verified.example from acme\n"
    assert domains_of(app, acme) == [("pending.example", None)]
    assert len(events(app, "sso.domain_removed")) == 1

    code, _, err = idp("domain", "remove", "--workspace", "acme", "bravo.example")
    assert code == 1 and "bravo.example is not a domain of acme" in err
    assert domains_of(app, other) == [("bravo.example", "operator")]


def test_list_when_there_are_none(idp, acme):
    assert idp("domain", "list") == (0, "(no domains)\n", "")


def test_admin_sees_the_operator_approval_on_the_tab(app, idp, acme):
    make_user(app, acme, "ann@example.com", role="admin")
    idp("domain", "approve", "--workspace", "acme", "acme.example")
    html = signed_in(app, "ann@example.com").get("/portal/sso").get_data(as_text=True)
    assert "Verified by the operator" in html


def test_the_installed_command(tmp_path, app, database_url, acme):
    """The real `idp` process, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        {
            "IDP_DATABASE_URL": database_url,
            "IDP_KEYS_DIR": str(app.extensions["idp"].settings.keys_dir),
            "PYTHONPATH": str(ROOT),
        }
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "idp.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = run("domain", "approve", "--workspace", "acme", "acme.example")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "verified: acme.example for acme (by the operator)\n"
    refused = run("domain", "approve", "--workspace", "nope", "acme.example")
    assert refused.returncode == 1 and "no workspace 'nope'" in refused.stderr
    assert run("domain", "list").stdout.startswith(
        "acme  acme.example  verified by operator"
    )
