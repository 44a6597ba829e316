"""The gateway's one check: may this request to a protected app pass?

Both forward-auth endpoints and the built-in reverse proxy call ``check``;
they differ only in how they read the original request and how they answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

from idp.models import Session, User, Workspace
from idp.services import audit, sessions
from idp.services.assertions import Claims, signer
from idp.services.context import Client, Context
from idp.services.returnurl import protected_hosts, safe_return_url
from idp.state import settings


@dataclass(frozen=True)
class Original:
    """The request the proxy is asking about."""

    method: str
    scheme: str
    host: str
    # Host with its port as the browser sent it (for the origin).
    netloc: str
    # Path and query, as sent.
    uri: str

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def url(self) -> str:
        return self.origin + self.uri

    @property
    def path(self) -> str:
        return urlsplit(self.uri).path or "/"

    @classmethod
    def parse(cls, method: str | None, url: str | None) -> Original | None:
        """From a full URL (nginx's X-Original-URL); None when unusable."""
        if not url:
            return None
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or not host:
            return None
        uri = parts.path or "/"
        if parts.query:
            uri += "?" + parts.query
        return cls(
            method=(method or "GET").upper()[:16],
            scheme=parts.scheme,
            host=host.lower().rstrip("."),
            netloc=parts.netloc.rpartition("@")[2].lower(),
            uri=uri,
        )

    @classmethod
    def from_parts(
        cls, method: str | None, scheme: str | None, host: str | None, uri: str | None
    ) -> Original | None:
        """From X-Forwarded-Method/-Proto/-Host/-Uri (Caddy, Traefik)."""
        if not host:
            return None
        scheme = (scheme or "").lower() or "https"
        uri = uri or "/"
        if not uri.startswith("/"):
            return None
        return cls.parse(method, f"{scheme}://{host}{uri}")


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
    outcome: Literal["allow", "sign_in", "deny"]
    reason: str | None = None
    identity: Identity | None = None
    # For "sign_in": where to send the browser (absolute URL).
    login_url: str | None = None


def route_for(host: str, path: str) -> dict | None:
    """The configured route with the longest path prefix for this request."""
    best = None
    for route in settings()["gateway"]["routes"]:
        prefix = route["path"]
        if route["host"] != host:
            continue
        if not (
            prefix == "/"
            or path == prefix.rstrip("/")
            or path.startswith(prefix.rstrip("/") + "/")
        ):
            continue
        if best is None or len(prefix) > len(best["path"]):
            best = route
    return best


def login_url(original: Original | None, reason: str | None = None) -> str:
    url = settings().public_url + "/login"
    query = []
    if original is not None and safe_return_url(original.url) is not None:
        query.append("rd=" + quote(original.url, safe=""))
    if reason is not None:
        query.append("reason=" + reason)
    return url + ("?" + "&".join(query) if query else "")


def check(token: str | None, client: Client, original: Original | None) -> Verdict:
    """Run the session, the workspace policy and the route's role rule for
    one request. Nothing is cached but the signed assertion."""
    if original is not None and original.host not in protected_hosts():
        # A proxy asking about a host we were not told to protect is a
        # misconfiguration; refuse rather than guess.
        _record_denial(None, client, original, "host_not_protected")
        return Verdict("deny", "host_not_protected")
    target = sessions.Target(
        host=original.host if original else None,
        path=original.path if original else None,
        method=original.method if original else None,
    )
    result = sessions.load(token, client, target)
    if result is None:
        return Verdict("sign_in", "not_signed_in", login_url=login_url(original))
    if isinstance(result, sessions.Refused):
        if result.ended:
            reason = result.decision.reason
            return Verdict("sign_in", reason, login_url=login_url(original, reason))
        return Verdict("deny", result.decision.reason)
    user, workspace, session = result.user, result.workspace, result.session
    route = route_for(original.host, original.path) if original else None
    if route is not None and user.role not in route["roles"]:
        _record_denial(
            Context.for_user(user, client, session),
            client,
            original,
            "role_not_allowed",
        )
        return Verdict("deny", "role_not_allowed")
    return Verdict("allow", identity=_identity(user, workspace, session, original))


def _identity(
    user: User, workspace: Workspace, session: Session, original: Original | None
) -> Identity:
    audience = original.origin if original else settings().public_url
    name = user.full_name or user.email
    claims = Claims(
        session_id=str(session.id),
        audience=audience,
        user_id=str(user.id),
        email=user.email,
        name=name,
        role=user.role,
        workspace=workspace.slug,
        amr=tuple(session.amr or ()),
        auth_time=int(session.authenticated_at.timestamp()),
    )
    return Identity(
        user_id=str(user.id),
        email=user.email,
        name=name,
        role=user.role,
        workspace=workspace.slug,
        assertion=signer().assertion(claims),
    )


def _record_denial(
    ctx: Context | None, client: Client, original: Original | None, reason: str
) -> None:
    ctx = ctx or Context.anonymous(client)
    audit.record_now(
        ctx,
        "gateway.denied",
        workspace_id=ctx.user.workspace_id if ctx.user is not None else None,
        outcome="denied",
        reason=reason,
        target=ctx.user,
        details={
            "host": original.host[:253] if original else "",
            "path": original.path[:200] if original else "",
            "method": original.method if original else "",
        },
    )
