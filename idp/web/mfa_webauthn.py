"""Passkeys and security keys: portal pages, passkey sign-in, set-up at sign-in."""

from __future__ import annotations
