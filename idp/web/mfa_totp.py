"""Authenticator app and recovery codes: portal pages and set-up at sign-in."""

from __future__ import annotations
