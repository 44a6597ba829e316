"""Sending mail: SMTP (plain, STARTTLS or implicit TLS) or a local outbox."""

from __future__ import annotations

import smtplib
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

SMTP_TIMEOUT_SECONDS = 15


class MailError(Exception):
    """The message could not be handed over; the text is safe to show an admin."""


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    # The secret link the mail carries, if any; echoed to the console in
    # outbox mode and never logged.
    link: str | None = None


class Mailer(Protocol):
    def send(self, mail: Mail) -> None: ...


def _message(mail: Mail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="portcullis")
    message.set_content(mail.text)
    return message


class SmtpMailer:
    def __init__(self, url: str, sender: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        default_port = {"smtps": 465, "smtp+starttls": 587}.get(parts.scheme, 25)
        self.port = parts.port or default_port
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender

    def send(self, mail: Mail) -> None:
        message = _message(mail, self.sender)
        context = ssl.create_default_context()
        try:
            if self.scheme == "smtps":
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS, context=context
                )
            else:
                client = smtplib.SMTP(
                    self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS
                )
            with client:
                if self.scheme == "smtp+starttls":
                    # STARTTLS is required: a server that does not offer it
                    # is refused rather than sent the message in clear.
                    client.starttls(context=context)
                if self.username:
                    client.login(self.username, self.password or "")
                client.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(f"{type(exc).__name__}: {exc}"[:300]) from exc


class OutboxMailer:
    """Local use: each mail becomes a file, and its link is printed."""

    def __init__(
        self, folder: Path, sender: str, echo: Callable[[str], None] | None = None
    ):
        self.folder = folder
        self.sender = sender
        self.echo = echo or _print

    def send(self, mail: Mail) -> None:
        message = _message(mail, self.sender)
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            path = self.folder / f"{stamp}.eml"
            path.write_bytes(bytes(message))
        except OSError as exc:
            raise MailError(f"cannot write to the outbox: {exc}") from exc
        line = f"Mail to {mail.to}: {mail.subject}"
        if mail.link:
            line += f"\n    {mail.link}"
        self.echo(line)


def _print(line: str) -> None:
    # The console, on purpose not the logger: links carry secrets, and log
    # lines travel to collectors (SECURITY.md 16.2.5).
    print(line, file=sys.stdout, flush=True)


def mailer_from_settings(smtp_url: str, sender: str, outbox: Path) -> Mailer:
    if smtp_url:
        return SmtpMailer(smtp_url, sender)
    return OutboxMailer(outbox, sender)
