"""Home-realm discovery on the sign-in page, its break-glass `?sso=off`, and
*Require SSO* at the password step: members refused with `sso_required`,
admins let through and audited, unknown addresses and wrong passwords
answered as before, and a password reset that does not get round it."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import Session
from tests.conftest import (
    GENERIC_FAILURE,
    PASSWORD,
    csrf_from,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
)
from tests.integration.sso_helpers import (
    add_connection,
    add_domain,
    events,
    set_connection,
)

NEW_PASSWORD = "a brand new long passphrase"


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    """Acme, connected by SAML, with acme.example verified."""
    ws = make_workspace(app, "Acme")
    make_user(app, ws, "ann@acme.example", role="admin")
    make_user(app, ws, "mia@acme.example")
    add_connection(app, ws)
    add_domain(app, ws, "acme.example", verified_by="operator")
    return ws


def email_step(client, email: str, *, rd: str | None = None, sso_off: bool = False):  # type: ignore[no-untyped-def]
    page = "/login" + (f"?rd={rd}" if rd else "")
    data = {"email": email}
    if rd:
        data["rd"] = rd
    if sso_off:
        data["sso"] = "off"
    return post_form(client, "/login", data, csrf_page=page)


def password_step(client, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    token = csrf_from(client, "/login/password")
    return client.post(
        "/login/password", data={"password": password, "csrf_token": token}
    )


def onward_target(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    refresh = response.headers["Refresh"]
    assert refresh.startswith("0; url=")
    return refresh.removeprefix("0; url=")


def sessions_count(app) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(Session))


# --- home-realm discovery ------------------------------------------------------


def test_verified_domain_goes_to_the_idp_without_a_password_field(app, client, acme):
    response = email_step(client, "mia@acme.example")
    assert onward_target(response) == "/sso/saml/acme/start"
    html = response.get_data(as_text=True)
    assert 'href="/sso/saml/acme/start"' in html
    assert 'type="password"' not in html
    # No password step was begun.
    assert client.get("/login/password").headers["Location"] == "/login"


def test_any_address_of_the_domain_goes_the_same_way(app, acme):
    """Known, unknown, admin: one answer, so it says nothing about accounts."""
    answers = []
    for email in ("mia@acme.example", "nobody@acme.example", "ann@acme.example"):
        response = email_step(app.test_client(), email)
        answers.append(
            (response.status_code, onward_target(response), response.get_data())
        )
    assert answers[0] == answers[1] == answers[2]


def test_address_spelled_differently_is_still_found(client, acme):
    response = email_step(client, "  Mia@ACME.Example. ")
    assert onward_target(response) == "/sso/saml/acme/start"


def test_return_path_is_carried_to_the_idp(client, acme):
    target = onward_target(email_step(client, "mia@acme.example", rd="/portal/users"))
    parts = urlsplit(target)
    assert parts.path == "/sso/saml/acme/start"
    assert parse_qs(parts.query) == {"rd": ["/portal/users"]}


def test_oidc_connection_is_discovered_too(app, client):
    ws = make_workspace(app, "Bravo")
    add_connection(app, ws, "oidc")
    add_domain(app, ws, "bravo.example", verified_by="dns")
    assert onward_target(email_step(client, "x@bravo.example")) == (
        "/sso/oidc/bravo/start"
    )


@pytest.mark.parametrize(
    "situation", ["pending", "disabled", "other-domain", "subdomain"]
)
def test_password_page_when_no_verified_domain_routes(app, client, situation):
    ws = make_workspace(app, "Acme")
    add_connection(app, ws, enabled=situation != "disabled")
    add_domain(
        app, ws, "acme.example", verified_by=None if situation == "pending" else "dns"
    )
    email = {
        "other-domain": "mia@elsewhere.example",
        "subdomain": "mia@eu.acme.example",
    }.get(situation, "mia@acme.example")
    response = email_step(client, email)
    assert response.status_code == 302
    assert response.headers["Location"] == "/login/password"


def test_sso_off_keeps_the_password_path(client, acme):
    page = client.get("/login?sso=off").get_data(as_text=True)
    assert 'name="sso" value="off"' in page
    assert "Single sign-on is skipped" in page
    response = email_step(client, "ann@acme.example", sso_off=True)
    assert response.status_code == 302
    assert response.headers["Location"] == "/login/password"
    # Any other value is ignored.
    assert "Single sign-on is skipped" not in client.get("/login?sso=no").get_data(
        as_text=True
    )


def test_a_password_account_in_another_workspace_uses_sso_off(app, acme):
    """The domain belongs to Acme, in the whole installation: its addresses
    go to Acme's IdP. Someone with such an address who also has a password
    account elsewhere signs in there through ?sso=off, which Acme's *Require
    SSO* does not reach."""
    set_connection(app, acme, require_sso=True)
    other = make_workspace(app, "Bravo")
    make_user(app, other, "mia@acme.example", role="admin")
    client = app.test_client()
    assert onward_target(email_step(client, "mia@acme.example")).startswith(
        "/sso/saml/acme/"
    )
    assert email_step(client, "mia@acme.example", sso_off=True).status_code == 302
    response = password_step(client)
    # Acme's account is refused a password, Bravo's is not: straight in.
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    assert response.headers["Location"] == "/portal/profile"
    profile = client.get("/portal/profile").get_data(as_text=True)
    assert "Bravo" in profile


# --- Require SSO -------------------------------------------------------------------


@pytest.fixture
def required(app, acme):  # type: ignore[no-untyped-def]
    set_connection(app, acme, require_sso=True)
    return acme


def test_member_password_refused_with_the_way_in(app, client, required):
    assert email_step(client, "mia@acme.example", sso_off=True).status_code == 302
    response = password_step(client)
    assert response.status_code == 403
    html = response.get_data(as_text=True)
    assert "signs you in through your company&#39;s single sign-on" in html
    assert 'href="/sso/saml/acme/start"' in html
    assert session_cookie(client) is None
    assert sessions_count(app) == 0
    (event,) = events(app, "signin.failure", reason="sso_required")
    assert event.target_label == "mia@acme.example" and event.outcome == "denied"


def test_wrong_password_and_unknown_address_answer_as_before(app, required):
    answers = []
    for email, password in (
        ("mia@acme.example", "not the password at all"),
        ("nobody@acme.example", PASSWORD),
    ):
        client = app.test_client()
        email_step(client, email, sso_off=True)
        response = password_step(client, password)
        body = re.sub(r'value="[^"]+"', "", response.get_data(as_text=True))
        body = body.replace(email, "EMAIL")
        answers.append((response.status_code, body))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and GENERIC_FAILURE in answers[0][1]
    assert events(app, "signin.failure", reason="sso_required") == []


def test_admin_keeps_the_password_and_it_is_audited(app, client, required):
    email_step(client, "ann@acme.example", sso_off=True)
    response = password_step(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/profile"
    assert client.get("/portal/profile").status_code == 200
    (event,) = events(app, "signin.break_glass")
    assert event.reason == "sso_required" and event.target_label == "ann@acme.example"
    assert event.details == {"method": "password", "break_glass": True}


@pytest.mark.parametrize("situation", ["not-required", "pending", "disabled"])
def test_member_keeps_the_password_when_the_rule_does_not_apply(app, situation):
    ws = make_workspace(app, "Acme")
    make_user(app, ws, "mia@acme.example")
    add_connection(
        app,
        ws,
        require_sso=situation != "not-required",
        enabled=situation != "disabled",
    )
    add_domain(
        app, ws, "acme.example", verified_by=None if situation == "pending" else "dns"
    )
    client = app.test_client()
    email_step(client, "mia@acme.example", sso_off=True)
    assert password_step(client).status_code == 302
    assert events(app, "signin.break_glass") == []


def test_member_made_admin_then_back(app, client, required):
    from idp.models import User

    with app.app_context():
        db.session.execute(
            sa.update(User).where(User.email == "mia@acme.example").values(role="admin")
        )
        db.session.commit()
    email_step(client, "mia@acme.example", sso_off=True)
    assert password_step(client).status_code == 302
    with app.app_context():
        db.session.execute(
            sa.update(User)
            .where(User.email == "mia@acme.example")
            .values(role="read_only")
        )
        db.session.commit()
    other = app.test_client()
    email_step(other, "mia@acme.example", sso_off=True)
    assert password_step(other).status_code == 403


def test_password_reset_completes_but_sign_in_is_still_refused(
    app, client, mailer, required
):
    post_form(client, "/login/forgot", {"email": "mia@acme.example"})
    link = mailer.last_to("mia@acme.example").link
    assert link is not None
    client.get(link.removeprefix("http://localhost"))
    response = post_form(
        client,
        "/reset",
        {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert sessions_count(app) == 0

    email_step(client, "mia@acme.example", sso_off=True)
    assert password_step(client, NEW_PASSWORD).status_code == 403
    assert sessions_count(app) == 0
    assert len(events(app, "signin.failure", reason="sso_required")) == 1


def test_joining_by_invitation_under_require_sso_signs_nobody_in(app, client, required):
    from idp.services.context import Context
    from idp.services.invitations import invite_user

    with app.test_request_context():
        issued = invite_user(
            Context.operator(),
            db.session.get(type(required), required.id),
            email="ivy@acme.example",
            role="read_only",
            full_name="Ivy",
            send_mail=False,
        )
        link = issued.link
    client.get(link.removeprefix("http://localhost"))
    response = post_form(
        client,
        "/invite",
        {
            "full_name": "Ivy",
            "password": NEW_PASSWORD,
            "password_confirm": NEW_PASSWORD,
        },
    )
    assert response.status_code == 403
    assert 'href="/sso/saml/acme/start"' in response.get_data(as_text=True)
    assert sessions_count(app) == 0


def test_choice_of_workspace_leaves_out_the_refused_account(app, client, required):
    """Mia's password opens Acme (SSO required) and Bravo: Bravo alone is
    offered, so she goes straight in."""
    bravo = make_workspace(app, "Bravo")
    carol = make_workspace(app, "Carol")
    make_user(app, bravo, "mia@acme.example")
    make_user(app, carol, "mia@acme.example")
    email_step(client, "mia@acme.example", sso_off=True)
    response = password_step(client)
    assert response.headers["Location"] == "/login/workspace"
    page = client.get("/login/workspace").get_data(as_text=True)
    assert "Bravo" in page and "Carol" in page and "Acme" not in page


def test_admin_choosing_the_required_workspace_is_audited(app, client, required):
    bravo = make_workspace(app, "Bravo")
    make_user(app, bravo, "ann@acme.example")
    email_step(client, "ann@acme.example", sso_off=True)
    assert password_step(client).headers["Location"] == "/login/workspace"
    page = client.get("/login/workspace").get_data(as_text=True)
    choices = re.findall(r'name="account" value="([0-9a-f-]{36})"', page)
    assert len(choices) == 2
    from idp.models import User

    with app.app_context():
        ann = db.session.scalar(
            sa.select(User.id).where(
                User.email == "ann@acme.example", User.workspace_id == required.id
            )
        )
    token = csrf_from(client, "/login/workspace")
    response = client.post(
        "/login/workspace", data={"account": str(ann), "csrf_token": token}
    )
    assert (
        response.status_code == 302
        and response.headers["Location"] == "/portal/profile"
    )
    assert len(events(app, "signin.break_glass")) == 1


def test_invitation_in_a_routed_domain_offers_single_sign_on(app, client):  # type: ignore[no-untyped-def]
    """An invited member whose address belongs to the workspace's IdP can
    join through it; the password form stays for the break-glass case."""
    from idp.services.context import Context
    from idp.services.invitations import invite_user
    from tests.integration.sso_helpers import add_connection, add_domain

    workspace = make_workspace(app, "Routed")
    admin = make_user(app, workspace, "boss@routed.example", role="admin")
    add_connection(app, workspace)
    add_domain(app, workspace, "routed.example", verified_by="operator")
    with app.app_context():
        from idp.models import User, Workspace

        actor = db.session.get(User, admin.id)
        issued = invite_user(
            Context.for_user(actor, Context.operator().client),
            db.session.get(Workspace, workspace.id),
            email="new@routed.example",
            role="read_only",
            full_name="New Person",
        )
        link = issued.link
    page = client.get(link.removeprefix("http://localhost"), follow_redirects=True)
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Join with single sign-on" in body
    assert f"/sso/saml/{workspace.slug}/start" in body
