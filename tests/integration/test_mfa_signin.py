"""The second step of sign-in and what surrounds it: a half-finished sign-in
reaches nothing but the MFA step, refusals come before any factor is asked
for, the flow works once, a recent sign-in guards changes to sign-in
methods, and an admin can reset a member's MFA."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    AuditEvent,
    IpAllowEntry,
    RecoveryCode,
    SecurityPolicy,
    Session,
    TotpSecret,
    User,
)
from tests.conftest import (
    PASSWORD,
    csrf_from,
    give_authenticator,
    login,
    make_user,
    make_workspace,
    post_form,
    session_cookie,
    signed_in,
)

PROXY = "10.0.0.5"
PROFILE = "/portal/profile"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"gateway": {"trusted_proxies": [PROXY]}}


@pytest.fixture
def acme(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    make_user(app, ws, "boss@example.com", role="admin")
    return ws


def set_policy(app, ws, **values: Any) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        row = db.session.get(SecurityPolicy, ws.id)
        for key, value in values.items():
            setattr(row, key, value)
        db.session.commit()


def code_now(app, secret: str, steps: int = 0) -> str:  # type: ignore[no-untyped-def]
    moment = app.extensions["idp"].clock() + timedelta(seconds=30 * steps)
    return pyotp.TOTP(secret).at(moment)


def submit_code(client, code: str, method: str = "totp"):  # type: ignore[no-untyped-def]
    token = csrf_from(client, "/login/mfa")
    return client.post(
        "/login/mfa", data={"method": method, "code": code, "csrf_token": token}
    )


def ask_gateway(client):  # type: ignore[no-untyped-def]
    return client.get(
        "/auth/check",
        headers={
            "X-Original-URL": "http://localhost/dashboard",
            "X-Original-Method": "GET",
        },
        environ_base={"REMOTE_ADDR": PROXY},
    )


def sessions_of(app, email: str) -> list[Session]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(sa.select(Session).join(User).where(User.email == email))
        )


def events(app, action: str) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return list(
            db.session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.action == action)
                .order_by(AuditEvent.id)
            )
        )


# --- the step ---------------------------------------------------------------


def test_a_member_with_a_factor_is_asked_for_it_after_the_password(app, acme):
    give_authenticator(app, "ann@example.com")
    client = app.test_client()

    answer = login(client, "ann@example.com")

    assert (answer.status_code, answer.headers["Location"]) == (302, "/login/mfa")
    assert session_cookie(client) is None
    assert sessions_of(app, "ann@example.com") == []
    page = client.get("/login/mfa").get_data(as_text=True)
    assert "Authenticator app" in page and "Use a recovery code" in page


def test_a_half_finished_sign_in_reaches_nothing_but_the_mfa_step(app, acme):
    give_authenticator(app, "ann@example.com")
    client = app.test_client()
    login(client, "ann@example.com")

    assert client.get(PROFILE).status_code == 302
    assert client.get("/portal/privacy-security").status_code == 302
    gateway = ask_gateway(client)
    assert gateway.status_code == 401
    assert not any(h.lower().startswith("x-auth-") for h, _ in gateway.headers)
    # Set-up pages are for members without a factor only.
    assert client.get("/login/mfa/setup").headers["Location"] == "/login/mfa/setup/done"
    assert client.get("/login/mfa").status_code == 200


def test_the_right_code_issues_a_session_that_records_mfa(app, acme):
    secret = give_authenticator(app, "ann@example.com")
    client = app.test_client()
    post_form(client, "/login?rd=/portal/users", {"email": "ann@example.com"})
    client.post(
        "/login/password",
        data={"password": PASSWORD, "csrf_token": csrf_from(client, "/login/password")},
    )

    answer = submit_code(client, code_now(app, secret))

    assert (answer.status_code, answer.headers["Location"]) == (302, "/portal/users")
    (row,) = sessions_of(app, "ann@example.com")
    assert row.amr == ["pwd", "otp", "mfa"]
    assert row.mfa_at == app.extensions["idp"].clock()
    assert client.get(PROFILE).status_code == 200
    assert ask_gateway(client).status_code == 200
    (success,) = events(app, "signin.success")
    assert success.details["amr"] == ["pwd", "otp", "mfa"]


def test_a_wrong_code_issues_nothing(app, acme):
    secret = give_authenticator(app, "ann@example.com")
    client = app.test_client()
    login(client, "ann@example.com")

    answer = submit_code(client, code_now(app, secret, steps=5))

    assert answer.status_code == 401
    assert "not right" in answer.get_data(as_text=True)
    assert session_cookie(client) is None
    assert sessions_of(app, "ann@example.com") == []
    assert events(app, "signin.success") == []


@pytest.mark.parametrize(
    "form",
    [
        {"method": "sms", "code": "123456"},
        {"method": "webauthn", "credential": "{}"},  # has no key
        {"method": "totp", "code": "1" * 100},
    ],
    ids=["unknown-method", "method-not-enrolled", "oversized"],
)
def test_hostile_mfa_forms_get_a_4xx(app, acme, form):
    give_authenticator(app, "ann@example.com")
    client = app.test_client()
    login(client, "ann@example.com")
    token = csrf_from(client, "/login/mfa")

    answer = client.post("/login/mfa", data={**form, "csrf_token": token})

    assert 400 <= answer.status_code < 500
    assert sessions_of(app, "ann@example.com") == []


def test_the_flow_works_once(app, acme, clock):
    secret = give_authenticator(app, "ann@example.com")
    client = app.test_client()
    login(client, "ann@example.com")
    held = client.get_cookie("portcullis_flow")
    assert held is not None

    submit_code(client, code_now(app, secret))
    assert len(sessions_of(app, "ann@example.com")) == 1

    # A copy of the flow cookie taken before the step is dead once it is
    # used: the sign-in changed what it is bound to.
    thief = app.test_client()
    thief.set_cookie("portcullis_flow", held.value, domain=held.domain)
    clock.advance(seconds=31)
    assert thief.get("/login/mfa").headers["Location"].startswith("/login")
    assert thief.get("/login/mfa").status_code == 302


def test_the_flow_expires(app, acme, clock):
    give_authenticator(app, "ann@example.com")
    client = app.test_client()
    login(client, "ann@example.com")
    lifetime = app.extensions["idp"].settings["sessions"]["flow_lifetime_seconds"]
    clock.advance(seconds=lifetime + 1)
    assert client.get("/login/mfa").status_code == 302


# --- refusals come first ----------------------------------------------------


def test_a_disabled_member_is_refused_before_any_factor(app, acme):
    give_authenticator(app, "ann@example.com")
    with app.app_context():
        db.session.execute(
            sa.update(User)
            .where(User.email == "ann@example.com")
            .values(status="disabled")
        )
        db.session.commit()
    client = app.test_client()

    answer = login(client, "ann@example.com")

    assert answer.status_code == 403
    assert "disabled" in answer.get_data(as_text=True)
    assert client.get("/login/mfa").status_code == 302


def test_an_address_outside_the_allow_list_is_refused_before_any_factor(app, acme):
    give_authenticator(app, "ann@example.com")
    with app.app_context():
        db.session.add(IpAllowEntry(workspace_id=acme.id, network="203.0.113.0/24"))
        db.session.commit()
    set_policy(app, acme, ip_restriction_enabled=True)
    client = app.test_client()

    answer = login(client, "ann@example.com")

    assert answer.status_code == 403
    assert client.get("/login/mfa").status_code == 302
    (event,) = events(app, "signin.failure")
    assert event.reason == "ip_not_allowed"


def test_a_member_without_a_factor_signs_in_with_the_password_alone(app, acme):
    client = app.test_client()
    answer = login(client, "ann@example.com")
    assert answer.headers["Location"] == "/portal/profile"
    (row,) = sessions_of(app, "ann@example.com")
    assert (row.amr, row.mfa_at) == (["pwd"], None)


# --- recent sign-in ---------------------------------------------------------


def test_changing_sign_in_methods_needs_a_recent_sign_in(app, acme, clock):
    client = signed_in(app, "ann@example.com")
    page = "/portal/privacy-security/authenticator"
    assert client.get(page).status_code == 200

    clock.advance(minutes=11)
    answer = client.get(page)
    assert answer.status_code == 302
    assert answer.headers["Location"] == (
        "/portal/reauthenticate?next=%2Fportal%2Fprivacy-security%2Fauthenticator"
    )

    wrong = post_form(
        client,
        "/portal/reauthenticate",
        {"password": "not it at all", "next": page},
        csrf_page="/portal/reauthenticate",
    )
    assert wrong.status_code == 400
    assert client.get(page).status_code == 302

    right = post_form(
        client,
        "/portal/reauthenticate",
        {"password": PASSWORD, "next": page},
        csrf_page="/portal/reauthenticate",
    )
    assert (right.status_code, right.headers["Location"]) == (302, page)
    assert client.get(page).status_code == 200
    assert len(events(app, "session.reauthenticated")) == 1

    clock.advance(minutes=11)
    assert client.get(page).status_code == 302


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/login", "/portal/../auth/check"],
)
def test_reauthentication_returns_to_portal_pages_only(app, acme, target):
    client = signed_in(app, "ann@example.com")
    answer = post_form(
        client,
        "/portal/reauthenticate",
        {"password": PASSWORD, "next": target},
        csrf_page="/portal/reauthenticate",
    )
    assert answer.headers["Location"] == "/portal/privacy-security"


# --- admin reset ------------------------------------------------------------


def test_an_admin_resets_a_members_mfa(app, acme, mailer):
    give_authenticator(app, "ann@example.com")
    with app.app_context():
        ann = db.session.scalar(sa.select(User).where(User.email == "ann@example.com"))
        db.session.add(
            RecoveryCode(workspace_id=acme.id, user_id=ann.id, code_hash="0" * 64)
        )
        db.session.commit()
    member = app.test_client()
    login(member, "ann@example.com")
    admin = signed_in(app, "boss@example.com")
    users_page = admin.get("/portal/users").get_data(as_text=True)
    assert f"/portal/users/{ann.id}/reset-mfa" in users_page

    answer = post_form(
        admin,
        f"/portal/users/{ann.id}/reset-mfa",
        {},
        csrf_page=f"/portal/users/{ann.id}/reset-mfa",
    )

    assert answer.status_code == 302
    with app.app_context():
        for model in (TotpSecret, RecoveryCode):
            assert db.session.scalars(sa.select(model)).all() == []
    (event,) = events(app, "mfa.reset")
    assert event.details["removed"] == ["Authenticator app"]
    assert event.actor_label == "boss@example.com"
    assert any(m.to == "ann@example.com" and "reset" in m.subject for m in mailer.sent)
    # Under forced MFA, her next sign-in sets a factor up again.
    set_policy(app, acme, mfa_mode="force")
    again = app.test_client()
    assert login(again, "ann@example.com").headers["Location"] == "/login/mfa/setup"


def test_an_admin_cannot_reset_their_own_mfa_here(app, acme):
    give_authenticator(app, "boss@example.com")
    with app.app_context():
        boss = db.session.scalar(
            sa.select(User).where(User.email == "boss@example.com")
        )
    client = app.test_client()
    login(client, "boss@example.com")
    secret_code = code_now(app, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    submit_code(client, secret_code)
    answer = post_form(
        client, f"/portal/users/{boss.id}/reset-mfa", {}, csrf_page="/portal/users"
    )
    assert answer.status_code == 409
    with app.app_context():
        assert db.session.scalars(sa.select(TotpSecret)).all() != []


def test_a_reset_ends_the_members_sessions_with_a_reason(app, acme):
    give_authenticator(app, "ann@example.com")
    with app.app_context():
        ann = db.session.scalar(sa.select(User).where(User.email == "ann@example.com"))
    member = app.test_client()
    login(member, "ann@example.com")
    submit_code(member, code_now(app, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"))
    assert member.get(PROFILE).status_code == 200

    admin = signed_in(app, "boss@example.com")
    post_form(
        admin,
        f"/portal/users/{ann.id}/reset-mfa",
        {},
        csrf_page=f"/portal/users/{ann.id}/reset-mfa",
    )

    answer = member.get(PROFILE)
    assert answer.status_code == 302
    assert "reason=mfa_reset" in answer.headers["Location"]


@pytest.mark.parametrize("mode", ["off", "force"])
def test_joining_by_invitation_under_forced_mfa_leads_to_set_up(
    app, acme, mailer, mode
):
    """Accepting an invitation is a password sign-in: under forced MFA it
    continues to setting up a factor, never to an error page."""
    admin = signed_in(app, "boss@example.com")
    post_form(
        admin,
        "/portal/users/invite",
        {"email": "new@example.com", "role": "read_only", "full_name": "New"},
    )
    set_policy(app, acme, mfa_mode=mode)
    link = mailer.last_to("new@example.com").link.removeprefix("http://localhost")
    joiner = app.test_client()
    assert joiner.get(link).headers["Location"] == "/invite"
    token = csrf_from(joiner, "/invite")

    answer = joiner.post(
        "/invite",
        data={
            "full_name": "New Member",
            "password": "a long new passphrase",
            "password_confirm": "a long new passphrase",
            "csrf_token": token,
        },
    )

    assert answer.status_code == 302
    if mode == "force":
        assert answer.headers["Location"] == "/login/mfa/setup"
        assert session_cookie(joiner) is None
        assert joiner.get("/login/mfa/setup").status_code == 200
        assert events(app, "signin.failure") == []
    else:
        assert answer.headers["Location"] == "/portal/profile"
        assert session_cookie(joiner) is not None
