"""Mail the services send, rendered from templates under templates/mail/."""

from __future__ import annotations

from typing import Any

from flask import render_template

from connectors.mail import Mail, MailError
from idp.state import settings, state


def link(path: str) -> str:
    return settings().public_url + path


def compose(
    template: str, to: str, subject: str, *, url: str | None = None, **values: Any
) -> Mail:
    text = render_template(f"mail/{template}.txt", url=url, **values)
    return Mail(to=to, subject=subject, text=text, link=url)


def send(mail: Mail) -> str | None:
    """Hand the mail over; the error text when that failed, else None."""
    try:
        state().mailer.send(mail)
    except MailError as exc:
        return str(exc)
    return None
