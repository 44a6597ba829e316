"""What one application instance holds besides Flask's own config."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from connectors.mail import Mailer
from idp.clientip import IPNetwork
from idp.clock import Clock
from idp.services.passwords import PasswordService
from idp.settings import Settings


@dataclass
class AppState:
    settings: Settings
    clock: Clock
    passwords: PasswordService
    mailer: Mailer
    trusted_proxies: tuple[IPNetwork, ...]


def state() -> AppState:
    return current_app.extensions["idp"]


def settings() -> Settings:
    return state().settings
