from tests.conftest import login, make_user, make_workspace, session_cookie


def test_sign_in_with_email_then_password(app, client):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    response = login(client, "ann@example.com")
    assert response.status_code == 302
    assert response.headers["Location"] == "/portal/profile"
    assert session_cookie(client)
    page = client.get("/portal/profile")
    assert page.status_code == 200
    assert "ann@example.com" in page.get_data(as_text=True)


def test_wrong_password_and_unknown_email_get_the_same_answer(app, client):
    ws = make_workspace(app)
    make_user(app, ws, "ann@example.com")
    wrong = login(client, "ann@example.com", "not the password at all")
    unknown = login(client, "nobody@example.com", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    assert "The email or password is incorrect." in wrong.get_data(as_text=True)
    assert wrong.get_data(as_text=True).replace("ann@", "X@") == unknown.get_data(
        as_text=True
    ).replace("nobody@", "X@")
