import sqlalchemy as sa

from idp.db import db
from idp.models import Session
from tests.conftest import login, make_user, make_workspace


def _session_row(app) -> Session:  # type: ignore[no-untyped-def]
    with app.app_context():
        return db.session.scalars(sa.select(Session)).one()


def test_last_seen_is_written_at_most_once_a_minute(app, client, clock):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    login(client, "ann@example.com")
    first = _session_row(app).last_seen_at

    clock.advance(seconds=59)
    assert client.get("/portal/profile").status_code == 200
    assert _session_row(app).last_seen_at == first

    clock.advance(seconds=2)
    assert client.get("/portal/profile").status_code == 200
    assert _session_row(app).last_seen_at == clock.now


def test_session_ends_at_its_absolute_lifetime(app, client, clock):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    login(client, "ann@example.com")
    clock.advance(days=30, seconds=-1)
    assert client.get("/portal/profile").status_code == 200
    clock.advance(seconds=1)
    response = client.get("/portal/profile")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?rd=")
    assert "expired=1" in response.headers["Location"]


def test_session_list_shows_device_ip_and_marks_this_session(app, client):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    client.environ_base.update(
        {
            "REMOTE_ADDR": "203.0.113.7",
            "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36",
        }
    )
    login(client, "ann@example.com")
    page = client.get("/portal/privacy-security").get_data(as_text=True)
    assert "Chrome on Linux" in page
    assert "203.0.113.7" in page
    assert "This session" in page


def test_token_is_stored_only_as_a_digest(app, client):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    login(client, "ann@example.com")
    token = client.get_cookie("portcullis_session").value
    row = _session_row(app)
    assert token not in row.token_hash and len(token) >= 43
