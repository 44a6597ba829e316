"""A short, human name for a browser from its User-Agent, for the session
list only (never a security decision)."""

from __future__ import annotations

import re

_BROWSERS = (
    ("Edge", re.compile(r"Edg(?:e|A|iOS)?/")),
    ("Opera", re.compile(r"OPR/")),
    ("Firefox", re.compile(r"(?:Firefox|FxiOS)/")),
    ("Chrome", re.compile(r"(?:Chrome|CriOS|HeadlessChrome)/")),
    ("Safari", re.compile(r"Version/[\d.]+.*Safari/")),
    ("curl", re.compile(r"^curl/")),
)
_SYSTEMS = (
    ("iPhone", re.compile(r"iPhone")),
    ("iPad", re.compile(r"iPad")),
    ("Android", re.compile(r"Android")),
    ("Windows", re.compile(r"Windows")),
    ("macOS", re.compile(r"Mac OS X|Macintosh")),
    ("ChromeOS", re.compile(r"CrOS")),
    ("Linux", re.compile(r"Linux")),
)


def describe(user_agent: str | None) -> str:
    if not user_agent:
        return "Unknown device"
    browser = next((name for name, rx in _BROWSERS if rx.search(user_agent)), "Browser")
    system = next((name for name, rx in _SYSTEMS if rx.search(user_agent)), None)
    return f"{browser} on {system}" if system else browser
