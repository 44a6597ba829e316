"""From verified claims to a member (SECURITY.md 6.8.1): identities keyed by
connection and subject, an unverified email never links, just-in-time
accounts inside verified domains only, the group-to-role mapping at every
sign-in, and each refusal audited with its reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from idp.db import db
from idp.models import (
    AuditEvent,
    FederatedIdentity,
    SsoConnection,
    SsoDomain,
    User,
    Workspace,
)
from idp.services.context import Client, Context
from idp.services.sso import Claims, SsoRefused, federation
from tests.conftest import make_user, make_workspace

CLIENT = Client(ip="203.0.113.9", peer_ip="203.0.113.9", user_agent="pytest")


@pytest.fixture
def world(app):  # type: ignore[no-untyped-def]
    ws = make_workspace(app, "Acme")
    admin = make_user(app, ws, "ann@acme.example", role="admin")
    with app.app_context():
        connection = SsoConnection(
            workspace_id=ws.id,
            protocol="saml",
            saml_entity_id="https://idp.acme.example",
            group_roles=[],
        )
        db.session.add(connection)
        db.session.flush()
        db.session.add(
            SsoDomain(
                workspace_id=ws.id,
                connection_id=connection.id,
                domain="acme.example",
                verification_token="t",
                verified_at=datetime.now(UTC),
                verified_by="operator",
            )
        )
        db.session.add(
            SsoDomain(
                workspace_id=ws.id,
                connection_id=connection.id,
                domain="pending.example",
                verification_token="u",
            )
        )
        db.session.commit()
        connection_id = connection.id
    return ws, admin, connection_id


def claims(subject: str = "sub-1", email: str | None = "bob@acme.example", **kw):  # type: ignore[no-untyped-def]
    values = {
        "issuer": "https://idp.acme.example",
        "subject": subject,
        "email": email,
        "email_verified": True,
    }
    values.update(kw)
    return Claims(**values)


def resolve(app, world, the_claims):  # type: ignore[no-untyped-def]
    _, _, connection_id = world
    with app.app_context():
        connection = db.session.get(SsoConnection, connection_id)
        ws = db.session.get(Workspace, connection.workspace_id)
        user = federation.resolve_member(
            Context.anonymous(CLIENT), ws, connection, the_claims
        )
        db.session.commit()
        return user.id


def refusal(app, world, the_claims) -> str:  # type: ignore[no-untyped-def]
    _, _, connection_id = world
    with app.app_context():
        connection = db.session.get(SsoConnection, connection_id)
        ws = db.session.get(Workspace, connection.workspace_id)
        with pytest.raises(SsoRefused) as caught:
            federation.resolve_member(
                Context.anonymous(CLIENT), ws, connection, the_claims
            )
        db.session.rollback()
        event = db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == "sso.signin_failure")
            .order_by(AuditEvent.id.desc())
            .limit(1)
        ).one()
        assert event.reason == caught.value.code
        assert event.outcome == "denied"
        return caught.value.code


def set_connection(app, world, **values) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        connection = db.session.get(SsoConnection, world[2])
        for key, value in values.items():
            setattr(connection, key, value)
        db.session.commit()


def counts(app) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with app.app_context():
        return (
            db.session.scalar(sa.select(sa.func.count()).select_from(User)),
            db.session.scalar(
                sa.select(sa.func.count()).select_from(FederatedIdentity)
            ),
        )


def test_existing_member_is_linked_by_verified_email_then_by_subject(app, world):
    bob = make_user(app, world[0], "bob@acme.example")
    assert resolve(app, world, claims()) == bob.id
    # Later sign-ins follow the subject, whatever email the IdP now sends.
    assert resolve(app, world, claims(email="robert@acme.example")) == bob.id
    with app.app_context():
        identity = db.session.scalars(sa.select(FederatedIdentity)).one()
        assert identity.subject == "sub-1" and identity.user_id == bob.id


@pytest.mark.parametrize(
    "the_claims, reason",
    [
        # OIDC email_verified false: never links (6.8.1).
        (claims(email_verified=False), "sso_email_unverified"),
        # A domain claimed but not verified routes and links nobody.
        (claims(email="bob@pending.example"), "sso_email_unverified"),
        # Another company's domain, though the IdP vouches for it.
        (claims(email="bob@elsewhere.example"), "sso_email_unverified"),
        (claims(email=None), "sso_email_missing"),
        (claims(email="not an address"), "sso_email_missing"),
    ],
    ids=["unverified", "pending-domain", "foreign-domain", "no-email", "bad-email"],
)
def test_an_email_the_connection_cannot_vouch_for_never_links(
    app, world, the_claims, reason
):
    make_user(app, world[0], "bob@acme.example")
    make_user(app, world[0], "bob@pending.example")
    make_user(app, world[0], "bob@elsewhere.example")
    before = counts(app)
    assert refusal(app, world, the_claims) == reason
    assert counts(app) == before


def test_one_idp_cannot_take_over_a_member_linked_to_another_subject(app, world):
    bob = make_user(app, world[0], "bob@acme.example")
    assert resolve(app, world, claims(subject="sub-1")) == bob.id
    assert refusal(app, world, claims(subject="sub-2")) == "sso_identity_conflict"


def test_no_account_and_no_just_in_time_is_refused(app, world):
    before = counts(app)
    assert refusal(app, world, claims(email="new@acme.example")) == "sso_no_account"
    assert counts(app) == before


def test_just_in_time_account_gets_the_default_role_and_name(app, world):
    set_connection(app, world, jit_enabled=True, default_role="read_only")
    user_id = resolve(
        app,
        world,
        claims(email="New.Person@ACME.example", first_name="New", last_name="Person"),
    )
    with app.app_context():
        user = db.session.get(User, user_id)
        assert (user.email, user.role, user.status) == (
            "new.person@acme.example",
            "read_only",
            "active",
        )
        assert user.full_name == "New Person"
        assert user.password_hash is None
        actions = set(db.session.scalars(sa.select(AuditEvent.action)))
        assert {"sso.user_created", "sso.identity_linked"} <= actions


def test_just_in_time_respects_the_workspace_domain_restriction(app, world):
    from idp.models import SecurityPolicy

    set_connection(app, world, jit_enabled=True)
    with app.app_context():
        policy = db.session.get(SecurityPolicy, world[0].id)
        if policy is None:
            policy = SecurityPolicy(workspace_id=world[0].id)
            db.session.add(policy)
        policy.domain_restriction_enabled = True
        db.session.commit()
    before = counts(app)
    assert refusal(app, world, claims(email="new@acme.example")) == (
        "sso_domain_not_allowed"
    )
    assert counts(app) == before


def test_disabled_member_is_refused_and_invited_member_joins(app, world):
    make_user(app, world[0], "dis@acme.example", status="disabled")
    assert refusal(app, world, claims(subject="d", email="dis@acme.example")) == (
        "sso_account_disabled"
    )
    invited = make_user(
        app, world[0], "inv@acme.example", status="invited", password=None
    )
    assert resolve(app, world, claims(subject="i", email="inv@acme.example")) == (
        invited.id
    )
    with app.app_context():
        user = db.session.get(User, invited.id)
        assert user.status == "active" and user.joined_at is not None


def test_group_mapping_applies_at_every_sign_in(app, world):
    set_connection(
        app,
        world,
        jit_enabled=True,
        default_role="read_only",
        group_roles=[
            {"group": "portcullis-admins", "role": "admin"},
            {"group": "staff", "role": "read_only"},
        ],
    )
    user_id = resolve(app, world, claims(groups=("staff", "portcullis-admins")))
    with app.app_context():
        assert db.session.get(User, user_id).role == "admin"
    # Removed from the admins group at the IdP: back to Read Only next time.
    resolve(app, world, claims(groups=("staff",)))
    with app.app_context():
        assert db.session.get(User, user_id).role == "read_only"
        changes = db.session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "user.change_role")
        ).all()
        assert [c.reason for c in changes] == ["sso_group_mapping"]
    # Group names compare exactly: "Portcullis-Admins" is another group.
    resolve(app, world, claims(groups=("Portcullis-Admins",)))
    with app.app_context():
        assert db.session.get(User, user_id).role == "read_only"


def test_group_mapping_never_demotes_the_last_admin(app, world):
    _, ann, _ = world
    set_connection(
        app, world, group_roles=[{"group": "portcullis-admins", "role": "admin"}]
    )
    resolve(app, world, claims(subject="ann", email="ann@acme.example", groups=()))
    with app.app_context():
        assert db.session.get(User, ann.id).role == "admin"
        denied = db.session.scalars(
            sa.select(AuditEvent).where(
                AuditEvent.action == "user.change_role",
                AuditEvent.outcome == "denied",
            )
        ).one()
        assert denied.reason == "last_admin"


def test_no_mapping_rules_leave_roles_to_the_admins(app, world):
    bob = make_user(app, world[0], "bob@acme.example", role="admin")
    resolve(app, world, claims(groups=("anything",)))
    with app.app_context():
        assert db.session.get(User, bob.id).role == "admin"


def test_test_result_touches_no_account(app, world):
    ws, _, connection_id = world
    before = counts(app)
    with app.app_context():
        connection = db.session.get(SsoConnection, connection_id)
        result = federation.test_result(
            ws,
            connection,
            claims(
                email="new@acme.example",
                groups=("g",),
                received={"mail": ["new@acme.example"]},
            ),
        )
    assert (
        result["outcome"] == "Refused: no account, and just-in-time accounts are off."
    )
    assert result["received"] == {"mail": ["new@acme.example"]}
    assert counts(app) == before


def test_the_refusal_says_which_check_failed(app, world):
    """One reason code for both, but the person reads the cause: the IdP
    did not vouch for the address, or its domain is not verified here."""
    ws, _, connection_id = world
    with app.app_context():
        connection = db.session.get(SsoConnection, connection_id)
        workspace = db.session.get(Workspace, ws.id)
        ctx = Context.anonymous(CLIENT)
        with pytest.raises(SsoRefused) as unvouched:
            federation.resolve_member(
                ctx, workspace, connection, claims(email_verified=False)
            )
        with pytest.raises(SsoRefused) as outside:
            federation.resolve_member(
                ctx, workspace, connection, claims(email="bob@elsewhere.example")
            )
    assert unvouched.value.message == federation.NOT_VOUCHED
    assert outside.value.message == federation.MESSAGES["sso_email_unverified"]
    with app.app_context():
        connection = db.session.get(SsoConnection, connection_id)
        result = federation.test_result(ws, connection, claims(email_verified=False))
    assert result["outcome"] == (
        "Refused: the IdP did not say the email address is verified."
    )


@pytest.mark.parametrize(
    "email, reason",
    [
        ("user@acme.example", None),
        ("User@ACME.EXAMPLE", None),
        ("user@acme.example.", None),
        ("user@evilacme.example", "sso_domain_not_allowed"),
        ("user@acme.example.evil.example", "sso_domain_not_allowed"),
        ("user@sub.acme.example", "sso_domain_not_allowed"),
        # Not an address at all: nothing to link or create.
        ("user@acme.example@evil.example", "sso_email_missing"),
        # Its domain is no verified domain of the connection.
        ("acme.example@evil.example", "sso_email_unverified"),
    ],
)
def test_case_acc_4_the_allow_list_at_the_first_sso_sign_in(app, world, email, reason):
    """cases/accounts.md ACC-4: the Security tab's domain allow-list holds at
    a just-in-time account as at an invitation. The connection here has
    verified each look-alike domain, so the allow-list alone decides."""
    from idp.models import DomainAllowEntry, SecurityPolicy

    ws, _, connection_id = world
    set_connection(app, world, jit_enabled=True)
    with app.app_context():
        for domain in (
            "evilacme.example",
            "acme.example.evil.example",
            "sub.acme.example",
        ):
            db.session.add(
                SsoDomain(
                    workspace_id=ws.id,
                    connection_id=connection_id,
                    domain=domain,
                    verification_token=domain,
                    verified_at=datetime.now(UTC),
                    verified_by="operator",
                )
            )
        db.session.add(DomainAllowEntry(workspace_id=ws.id, domain="acme.example"))
        policy = db.session.get(SecurityPolicy, ws.id)
        if policy is None:
            policy = SecurityPolicy(workspace_id=ws.id)
            db.session.add(policy)
        policy.domain_restriction_enabled = True
        db.session.commit()
    before = counts(app)
    if reason is None:
        user_id = resolve(app, world, claims(email=email))
        with app.app_context():
            assert db.session.get(User, user_id).email == "user@acme.example"
    else:
        assert refusal(app, world, claims(email=email)) == reason
        assert counts(app) == before
