"""The gateway's one check: may this request to a protected app pass?

Both forward-auth endpoints and the built-in reverse proxy call ``check``;
they differ only in how they read the original request and how they answer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from idp.db import db
from idp.models import Session, User
from idp.services import audit, reasons, sessions
from idp.services.assertions import Claims, signer
from idp.services.context import Client, Context
from idp.services.returnurl import protected_hosts, safe_return_url
from idp.state import settings

log = logging.getLogger(__name__)

# Longer than any URL a browser sends; past it the proxy is not asking about
# a real request.
MAX_URL_LENGTH = 8192
# An HTTP method is a token (RFC 9110, 5.6.2).
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters a host name can never hold; a host spelled with them is a trick.
BAD_HOST_CHARACTERS = frozenset("/\\@?#%[] \t")
# In X-Forwarded-Host, these would move the boundary between host and path
# once the parts are joined into one URL.
BAD_FORWARDED_HOST_CHARACTERS = frozenset("/\\@?# \t")

Outcome = Literal["allow", "sign_in", "deny"]


def _escaped(text: str, limit: int = 200) -> str:
    """Printable text for the audit log: a hostile header may hold anything."""
    return "".join(
        c if c.isprintable() and c.isascii() else f"\\x{ord(c):02x}"
        for c in text[:limit]
    )


_VISIBLE_ASCII = "".join(chr(b) for b in range(0x21, 0x7F))


def _as_sent(url: str) -> str | None:
    """The URL as it was on the wire: ASCII, with any raw byte above 0x7F
    percent-encoded. None when it holds a space or a control character,
    which no browser sends and which parsers disagree about."""
    if url.isascii() and url.isprintable() and " " not in url:
        # Already as sent, the common case: nothing to encode.
        return url
    try:
        raw = url.encode("latin-1")
    except UnicodeEncodeError:
        return None
    if any(byte <= 0x20 or byte == 0x7F for byte in raw):
        return None
    return quote(raw, safe=_VISIBLE_ASCII)


@dataclass(frozen=True)
class Original:
    """The request the proxy is asking about."""

    method: str
    scheme: str
    host: str
    # Host with its port as the browser sent it (default ports dropped).
    netloc: str
    # Path and query, ASCII, as sent.
    uri: str

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def url(self) -> str:
        return self.origin + self.uri

    @property
    def path(self) -> str:
        # Split by hand: urlsplit would read "//admin/x" as host "admin".
        return self.uri.partition("?")[0] or "/"

    @classmethod
    def parse(cls, method: str | None, url: str | None) -> Original | None:
        """From a full URL (nginx's X-Original-URL); None when unusable."""
        if not url or len(url) > MAX_URL_LENGTH:
            return None
        method = (method or "GET").strip().upper()
        if not METHOD.fullmatch(method):
            return None
        url = _as_sent(url)
        # No browser sends a fragment; one in the request line would hide
        # the rest of the path from us and not from the app.
        if url is None or "#" in url:
            return None
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not url.lower().startswith(scheme + "://"):
            return None
        # A Host header never carries credentials, a backslash or an empty
        # name: such a URL was forged to make us judge one host and the
        # browser visit another.
        if not host or "@" in parts.netloc or "\\" in parts.netloc:
            return None
        if port is not None and not 0 < port < 65536:
            return None
        # One trailing dot is the same name, fully qualified; an empty label
        # anywhere else is no name at all.
        host = host.removesuffix(".")
        if not host or host.startswith(".") or ".." in host:
            return None
        if ":" not in host and BAD_HOST_CHARACTERS & set(host):
            return None
        name = f"[{host}]" if ":" in host else host
        if port is not None and port != DEFAULT_PORTS[scheme]:
            name += f":{port}"
        uri = parts.path or "/"
        if parts.query:
            uri += "?" + parts.query
        return cls(method=method, scheme=scheme, host=host, netloc=name, uri=uri)

    @classmethod
    def from_parts(
        cls, method: str | None, scheme: str | None, host: str | None, uri: str | None
    ) -> Original | None:
        """From X-Forwarded-Method/-Proto/-Host/-Uri (Caddy, Traefik)."""
        if not host or not uri or not uri.startswith("/"):
            return None
        scheme = (scheme or settings().public_scheme).strip().lower()
        host = host.strip()
        if scheme not in DEFAULT_PORTS or BAD_FORWARDED_HOST_CHARACTERS & set(host):
            return None
        return cls.parse(method, f"{scheme}://{host}{uri}")


@dataclass(frozen=True)
class Unreadable:
    """A trusted proxy asked about a request it did not describe, or described
    in a way we cannot read. ``sent`` is what it sent, for the audit log."""

    sent: str


@dataclass(frozen=True)
class Identity:
    user_id: str
    email: str
    name: str
    role: str
    workspace: str
    assertion: str


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str | None = None
    identity: Identity | None = None
    # For "sign_in": where to send the browser (absolute URL).
    login_url: str | None = None


def _covers(prefix: str, path: str) -> bool:
    """Whether a route prefix covers ``path``, on a segment boundary and
    without regard to case (some servers ignore it): /admin covers /admin,
    /Admin and /admin/x, never /administrator."""
    stem = prefix.rstrip("/").lower()
    path = path.lower()
    return stem == "" or path == stem or path.startswith(stem + "/")


def route_for(
    host: str, path: str, *, with_upstream: bool = False
) -> dict[str, Any] | None:
    """The configured route with the longest path prefix for this request;
    ``with_upstream``: among the routes the built-in proxy forwards, so a
    role-only route (an admin-only /admin) does not hide the app's upstream
    from the paths beneath it."""
    best = None
    for route in settings()["gateway"]["routes"]:
        if route["host"] != host or not _covers(route["path"], path):
            continue
        if with_upstream and not route["upstream"]:
            continue
        if best is None or len(route["path"].rstrip("/")) > len(
            best["path"].rstrip("/")
        ):
            best = route
    return best


def _remove_dot_segments(path: str) -> str:
    kept: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if path.endswith(("/.", "/..")):
        kept.append("")
    return "/" + "/".join(kept)


# Past this many readings a path is built to exhaust us, not to be served.
MAX_READINGS = 512


def _readings_of(path: str) -> tuple[str, ...]:
    """One step of each rewrite a server may apply before routing. Each
    keeps the leading slash and none makes a path longer, so applying them
    until nothing changes ends."""
    return (
        unquote(path),
        path.replace("\\", "/"),
        re.sub(r"/+", "/", path),
        _remove_dot_segments(path),
        "/".join(part.partition(";")[0] for part in path.split("/")),
    )


def readings(path: str) -> set[str] | None:
    """The ways an upstream may read ``path``: every result of applying, in
    any order and as often as they change it, percent-decoding, backslashes
    as slashes, merged slashes, resolved dot segments and dropped
    ``;parameters``. Servers differ on each of these and on their order
    (a servlet container drops /..;/ parameters and then resolves the dots),
    so a role rule must hold for every reading. None when the readings
    multiply past MAX_READINGS."""
    found = {path}
    todo = [path]
    while todo:
        for reading in _readings_of(todo.pop()):
            if reading not in found:
                found.add(reading)
                todo.append(reading)
                if len(found) > MAX_READINGS:
                    return None
    return found


def _climbs(path: str) -> bool:
    depth = 0
    for segment in path.split("/")[1:]:
        if segment == "..":
            if depth == 0:
                return True
            depth -= 1
        elif segment != ".":
            depth += 1
    return False


def climbs_above_root(path: str) -> bool:
    """Whether some reading of ``path`` climbs above the root with ``..``.
    A server clamps such a climb at its own root, which behind the built-in
    proxy lies above the route's upstream path: /x/../../private reaches
    /private there, maybe another route's mount, after passing as the "/"
    route. Browsers resolve dot segments before sending, so none sends one."""
    every = readings(path)
    return every is None or any(_climbs(reading) for reading in every)


def role_allowed(host: str, path: str, role: str) -> bool:
    """Whether ``role`` passes every route rule that any reading of the path
    falls under."""
    every = readings(path)
    if every is None:
        return False
    for reading in every:
        route = route_for(host, reading)
        if route is not None and role not in route["roles"]:
            return False
    return True


def login_url(original: Original | None, reason: str | None = None) -> str:
    """The sign-in page, with the original URL as ``rd`` when it may be
    returned to (GW-1; /login judges it again)."""
    url = settings().public_url + "/login"
    query = []
    if original is not None and safe_return_url(original.url) is not None:
        query.append("rd=" + quote(original.url, safe=""))
    if reason is not None:
        query.append("reason=" + quote(reason, safe=""))
    return url + ("?" + "&".join(query) if query else "")


def check(
    token: str | None, client: Client, original: Original | Unreadable | None
) -> Verdict:
    """Run the session, the workspace policy and the route's role rule for
    one request. ``original`` is None when the caller is not a trusted proxy:
    without the request it asks about, no host or route rule could apply,
    so it is refused (a proxy left off gateway.trusted_proxies shows up at
    once, rather than as apps that ignore their role rules). Nothing is
    cached but the signed assertion."""
    if original is None:
        _record_denial(None, client, None, "proxy_not_trusted")
        return Verdict("deny", "proxy_not_trusted")
    if isinstance(original, Unreadable):
        # Fail closed: without the request we cannot apply route rules.
        _record_denial(None, client, None, "bad_original_request", original.sent)
        return Verdict("deny", "bad_original_request")
    if original.host not in protected_hosts():
        # A proxy asking about a host we were not told to protect is a
        # misconfiguration or a forged Host; refuse rather than guess.
        _record_denial(None, client, original, "host_not_protected")
        return Verdict("deny", "host_not_protected")
    target = sessions.Target(
        host=original.host, path=original.path, method=original.method
    )
    result = sessions.check(token, client, target)
    if result is None:
        # A session a policy ended earlier (an idle timeout seen by the
        # portal, a sign-in elsewhere past the limit): the sign-in page says
        # why, as it does for the portal.
        ended = sessions.ended_reason(token)
        if ended in reasons.SESSION_ENDED:
            return Verdict("sign_in", ended, login_url=login_url(original, ended))
        return Verdict("sign_in", "not_signed_in", login_url=login_url(original))
    if isinstance(result, sessions.Refused):
        reason = result.decision.reason
        if result.ended:
            return Verdict("sign_in", reason, login_url=login_url(original, reason))
        log.info("gateway.denied reason=%s", reason)
        return Verdict("deny", reason)
    if not role_allowed(original.host, original.path, result.role):
        user = db.session.get(User, result.user_id)
        session = db.session.get(Session, result.session_id)
        if user is None or session is None:
            # Deleted since the check read them: no live session.
            return Verdict("sign_in", "not_signed_in", login_url=login_url(original))
        _record_denial(
            Context.for_user(user, client, session),
            client,
            original,
            "role_not_allowed",
        )
        return Verdict("deny", "role_not_allowed")
    return Verdict("allow", identity=_identity(result, original))


def _identity(checked: sessions.Checked, original: Original) -> Identity:
    name = checked.full_name or checked.email
    user_id = str(checked.user_id)
    claims = Claims(
        session_id=str(checked.session_id),
        audience=original.origin,
        user_id=user_id,
        email=checked.email,
        name=name,
        role=checked.role,
        workspace=checked.workspace_slug,
        amr=checked.amr,
        auth_time=int(checked.authenticated_at.timestamp()),
    )
    return Identity(
        user_id=user_id,
        email=checked.email,
        name=name,
        role=checked.role,
        workspace=checked.workspace_slug,
        assertion=signer().assertion(claims),
    )


def _record_denial(
    ctx: Context | None,
    client: Client,
    original: Original | None,
    reason: str,
    sent: str | None = None,
) -> None:
    ctx = ctx or Context.anonymous(client)
    details = {
        "host": _escaped(original.host, 253) if original else "",
        "path": _escaped(original.path) if original else "",
        "method": original.method if original else "",
    }
    if sent is not None:
        # Without the query, where an app's links may carry secrets.
        details["sent"] = _escaped(sent.partition("?")[0])
    # The path stays out of the log for the same reason (ASVS 16.2.5).
    log.info("gateway.denied reason=%s host=%s", reason, details["host"])
    audit.record_now(
        ctx,
        "gateway.denied",
        workspace_id=ctx.user.workspace_id if ctx.user is not None else None,
        outcome="denied",
        reason=reason,
        target=ctx.user,
        details=details,
    )
