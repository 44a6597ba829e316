from connectors.mail import Mail, OutboxMailer, SmtpMailer


def test_outbox_writes_a_file_and_echoes_the_link(tmp_path):
    lines = []
    mailer = OutboxMailer(
        tmp_path / "outbox", "Portcullis <no-reply@localhost>", echo=lines.append
    )
    mailer.send(
        Mail(to="ann@example.com", subject="Hi", text="Body", link="http://localhost/x")
    )
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 1
    content = files[0].read_text()
    assert "To: ann@example.com" in content and "Body" in content
    assert lines == ["Mail to ann@example.com: Hi\n    http://localhost/x"]


def test_smtp_url_schemes_ports_and_userinfo():
    m = SmtpMailer("smtp+starttls://me%40x.com:p%3Ass@mail.example.com", "a@b.c")
    assert (m.scheme, m.host, m.port, m.username, m.password) == (
        "smtp+starttls",
        "mail.example.com",
        587,
        "me@x.com",
        "p:ss",
    )
    assert SmtpMailer("smtps://mail.example.com", "a@b.c").port == 465
    assert SmtpMailer("smtp://mail.example.com:2525", "a@b.c").port == 2525
