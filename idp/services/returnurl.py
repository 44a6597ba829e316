"""Return URLs after sign-in: kept only when they point at a protected host
(GW-1). Parsed the way a browser would, so no spelling slips past."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from idp.state import settings

DEFAULT = "/portal/profile"
MAX_LENGTH = 2048


def protected_hosts() -> set[str]:
    s = settings()
    hosts = {h.lower().rstrip(".") for h in s["gateway"]["protected_hosts"]}
    hosts.add(s.public_host.lower())
    return hosts


def _leaves_site_once_decoded(path: str) -> bool:
    """True when decoding the path, as a proxy or app may do before it
    redirects, turns it into a network path: /%5Cevil.example becomes
    /\\evil.example, which browsers read as //evil.example."""
    for _ in range(3):
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded
        seen = "".join(c for c in path if c not in "\t\r\n").replace("\\", "/")
        if seen.startswith("//"):
            return True
    # Still encoded after three rounds: nobody needs that in a return URL.
    return True


def safe_return_url(value: str | None) -> str | None:
    """``value`` if it is a path on this site or an http(s) URL of a protected
    host, else None."""
    if not value or len(value) > MAX_LENGTH:
        return None
    # Browsers drop tabs and newlines anywhere and treat a backslash as a
    # slash in http(s) URLs; judge the URL as they will read it.
    if any(c in value for c in "\t\r\n") or any(
        ord(c) < 0x20 or ord(c) == 0x7F for c in value
    ):
        return None
    browser_view = value.replace("\\", "/")
    if browser_view.startswith("/") and not browser_view.startswith("//"):
        parts = urlsplit(browser_view)
        if parts.scheme or parts.netloc:
            return None
        if _leaves_site_once_decoded(value):
            return None
        return value
    try:
        parts = urlsplit(browser_view)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not browser_view.startswith(
        parts.scheme + "://"
    ):
        return None
    if parts.scheme == "http" and settings().public_scheme == "https":
        # Protected hosts share the public URL's scheme: never downgrade.
        return None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return None
    if not host or host.rstrip(".").lower() not in protected_hosts():
        return None
    if port is not None and not 0 < port < 65536:
        return None
    if value != browser_view:
        return None
    return value
