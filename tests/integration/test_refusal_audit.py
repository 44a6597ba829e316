"""Every refused input leaves one audit entry with its reason code."""

import sqlalchemy as sa

from idp.db import db
from idp.models import AuditEvent
from tests.conftest import login, make_user, make_workspace, post_form


def refusals(app) -> list[tuple[str | None, str, str | None]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        events = db.session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.action == "request.refused")
            .order_by(AuditEvent.id)
        )
        return [(e.reason, e.actor_label, e.details.get("endpoint")) for e in events]


def test_invalid_form_input_is_audited_under_the_member(app, client):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    login(client, "ann@example.com")
    response = post_form(
        client,
        "/portal/users/invite",
        {"email": "not an email", "role": "read_only", "full_name": ""},
    )
    assert response.status_code == 400
    assert refusals(app) == [("invalid_email", "ann@example.com", "portal.invite")]


def test_a_bad_link_is_audited(app, client):
    client.get("/invite/" + "x" * 43)
    assert client.get("/invite").status_code == 400
    assert refusals(app) == [("invalid_link", "anonymous", "auth.invite_accept")]


def test_csrf_failure_and_oversized_body_are_audited(app, client):
    assert client.post("/login", data={"email": "a@example.com"}).status_code == 400
    assert client.post("/login", data={"email": "a" * 200_000}).status_code == 413
    assert [r[0] for r in refusals(app)] == ["csrf_failed", "request_too_large"]
