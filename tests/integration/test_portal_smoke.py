"""Every portal page renders for an admin and for a Read Only member."""

import pytest

from tests.conftest import login, make_user, make_workspace, post_form

PAGES = [
    "/portal/profile",
    "/portal/profile?edit=1",
    "/portal/profile/email",
    "/portal/privacy-security",
    "/portal/privacy-security/logout-others",
    "/portal/privacy-security/password",
    "/portal/users",
    "/portal/users?q=ann",
    "/portal/audit-logs",
    "/portal/audit-logs?q=sign&action=signin.success&actor=a&from=2020-01-01&to=2099-01-01",
]


@pytest.mark.parametrize("path", PAGES)
def test_admin_pages_render(app, client, path):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    make_user(app, ws, "bob@example.com")
    login(client, "ann@example.com")
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]


def test_invite_accept_and_sign_in(app, client, mailer):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com", role="admin")
    login(client, "ann@example.com")
    response = post_form(
        client,
        "/portal/users/invite",
        {"email": "Carol@Example.com", "role": "read_only", "full_name": "Carol C"},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    mail = mailer.last_to("carol@example.com")
    path = mail.link.removeprefix("http://localhost")
    other = client.application.test_client()
    assert other.get(path).status_code == 302
    page = other.get("/invite")
    assert page.status_code == 200
    accepted = post_form(
        other,
        "/invite",
        {
            "full_name": "Carol Carter",
            "password": "a long enough passphrase",
            "password_confirm": "a long enough passphrase",
        },
    )
    assert accepted.status_code == 302, accepted.get_data(as_text=True)
    assert other.get("/portal/profile").status_code == 200
    users = client.get("/portal/users").get_data(as_text=True)
    assert "Carol Carter" in users and "Joined" in users
