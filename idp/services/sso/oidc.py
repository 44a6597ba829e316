"""OpenID Connect sign-in through a workspace's company IdP: the SSO tab's
configuration by discovery, the start of a sign-in, and the callback.

A sign-in is an ``SsoRequest`` whose id is the OAuth ``state``, holding
the nonce and the PKCE verifier (encrypted), bound to the browser by its
SSO cookie. The callback uses the request up and commits before anything
else, so a state works once even when what follows fails (OIDC-2). The
IdP's JWKS is cached on the connection; an unreachable IdP fails only the
sign-in at hand (SECURITY.md, faults).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from connectors import oidc, oidc_id_token
from connectors.fetch import FetchError, check_url
from idp.clock import now
from idp.db import db
from idp.models import FederatedIdentity, SsoConnection, SsoRequest, Workspace
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import InvalidInput
from idp.services.permissions import require_admin
from idp.services.sso import Claims, SsoRefused, connections, federation
from idp.services.sso import requests as sso_requests
from idp.state import settings

log = logging.getLogger(__name__)

DEFAULT_SCOPES = "openid email profile"
MAX_SCOPES = 512
MAX_CLIENT_ID = 512
MAX_SECRET = 1024
MAX_TENANTS = 100
# An unknown key id fetches the JWKS again only when our copy is older than
# this: a stream of forged key ids cannot make us hammer the IdP.
JWKS_REFETCH_SECONDS = 60
# RFC 6749 A.4: a scope token is printable ASCII without '"' and '\'.
_SCOPE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "\\"}

MESSAGES = {
    "oidc_malformed": "The answer from your company's IdP was incomplete. Sign in again.",
    "oidc_idp_unreachable": "Your company's IdP could not be reached, so the sign-in cannot be completed. Try again in a moment; if it keeps failing, tell your IT team.",
    "oidc_token_exchange_failed": "Your company's IdP refused to complete the sign-in. Sign in again; if it keeps failing, tell your IT team.",
    "oidc_not_configured": "Single sign-on is not fully set up for this workspace. Ask an admin of the workspace.",
}


def configure(
    ctx: Context,
    workspace: Workspace,
    *,
    issuer: str,
    client_id: str,
    client_secret: str | None = None,
    scopes: str = DEFAULT_SCOPES,
    allowed_tenants: list[str] | tuple[str, ...] = (),
) -> SsoConnection:
    """Connect the workspace to an OIDC IdP by its issuer's discovery
    document. An empty ``client_secret`` keeps the stored one."""
    require_admin(ctx, workspace.id, "sso.configure")
    rules = connections.fetch_rules()
    issuer = issuer.strip()
    try:
        check_url(issuer, rules)
    except FetchError as exc:
        raise InvalidInput(f"Issuer: {exc}", code="invalid_issuer") from exc
    if "?" in issuer or "#" in issuer:
        raise InvalidInput(
            "The issuer has no query or fragment.", code="invalid_issuer"
        )
    client_id = _clean_client_id(client_id)
    scope = _clean_scopes(scopes)
    tenants = _clean_tenants(allowed_tenants)
    existing = connections.for_workspace(workspace.id)
    if not client_secret and (existing is None or not existing.oidc_client_secret):
        raise InvalidInput(
            "Enter the client secret the IdP gave for this application.",
            code="client_secret_required",
        )
    if client_secret and (
        len(client_secret) > MAX_SECRET or not client_secret.isprintable()
    ):
        raise InvalidInput(
            "The client secret is not valid.", code="invalid_client_secret"
        )

    try:
        document, provider = oidc.fetch_discovery(issuer, rules)
        jwks = oidc.fetch_jwks(provider.jwks_uri, rules)
    except FetchError as exc:
        raise InvalidInput(
            f"The IdP's discovery document or keys could not be read: {exc}",
            code="sso_discovery_failed",
        ) from exc
    except oidc.OidcError as exc:
        raise InvalidInput(str(exc), code=exc.code) from exc
    if provider.tenant_template and not tenants:
        raise InvalidInput(
            "This Microsoft Entra ID issuer accepts people of any organisation: "
            "list the tenant ids (directory ids) to allow.",
            code="sso_tenants_required",
        )

    connection, created = connections.ensure(ctx, workspace, "oidc")
    moment = now()
    previous_issuer = connection.oidc_issuer
    unlinked = 0
    if previous_issuer is not None and previous_issuer != issuer:
        # Subjects are only unique per IdP: another issuer's "sub" could
        # be a stored one (SECURITY.md 6.8.1). Members link again by their
        # verified email at their next sign-in.
        unlinked = db.session.execute(
            sa.delete(FederatedIdentity).where(
                FederatedIdentity.connection_id == connection.id
            )
        ).rowcount
    connection.oidc_issuer = issuer
    connection.oidc_client_id = client_id
    if client_secret:
        connection.oidc_client_secret = connections.encrypt(client_secret)
    connection.oidc_scopes = scope
    connection.oidc_allowed_tenants = tenants if provider.tenant_template else []
    connection.oidc_discovery = document
    connection.oidc_jwks = jwks
    connection.oidc_jwks_fetched_at = moment
    connection.updated_at = moment
    audit.record(
        ctx,
        "sso.connection_configured",
        workspace_id=workspace.id,
        details={
            "protocol": "oidc",
            "issuer": issuer,
            "client_id": client_id,
            "scopes": scope,
            "created": created,
            "secret_changed": bool(client_secret),
            "tenants": list(connection.oidc_allowed_tenants),
            **({"identities_unlinked": unlinked} if unlinked else {}),
        },
    )
    db.session.commit()
    return connection


def _clean_client_id(value: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_CLIENT_ID or not value.isprintable():
        raise InvalidInput(
            "Enter the client id the IdP gave for this application.",
            code="invalid_client_id",
        )
    return value


def _clean_scopes(value: str) -> str:
    # Left blank: the usual three.
    scopes = list(dict.fromkeys(value.split() or DEFAULT_SCOPES.split()))
    if "openid" not in scopes:
        raise InvalidInput("The scopes must include openid.", code="invalid_scopes")
    if any(not set(s) <= _SCOPE_CHARS for s in scopes):
        raise InvalidInput(
            "A scope holds characters scopes cannot.", code="invalid_scopes"
        )
    joined = " ".join(scopes)
    if len(joined) > MAX_SCOPES:
        raise InvalidInput("Too many scopes.", code="invalid_scopes")
    return joined


def _clean_tenants(values: list[str] | tuple[str, ...]) -> list[str]:
    tenants = list(dict.fromkeys(v.strip().lower() for v in values if v.strip()))
    if len(tenants) > MAX_TENANTS:
        raise InvalidInput(f"At most {MAX_TENANTS} tenants.", code="invalid_tenant")
    for tenant in tenants:
        if not oidc.is_tenant_id(tenant):
            raise InvalidInput(
                f"{tenant[:60]!r} is not a tenant id: Entra shows it as a GUID "
                "such as 72f988bf-86f1-41af-91ab-2d7cd011db47.",
                code="invalid_tenant",
            )
    return tenants


def start(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    *,
    binding: str,
    purpose: str = "signin",
    return_to: str | None = None,
    requested_by: uuid.UUID | None = None,
) -> str:
    """Record a sign-in (state, nonce, PKCE verifier) and return the IdP's
    authorization URL to send the browser to."""
    provider = _provider(ctx, connection)
    nonce = secrets.token_urlsafe(32)
    verifier = oidc.new_code_verifier()
    request = sso_requests.begin(
        connection,
        binding=binding,
        purpose=purpose,
        return_to=return_to,
        requested_by=requested_by,
        nonce=nonce,
        code_verifier=connections.encrypt(verifier),
    )
    state = request.id
    db.session.commit()
    return oidc.authorization_url(
        provider,
        client_id=connection.oidc_client_id or "",
        redirect_uri=connections.oidc_redirect_uri(workspace),
        scope=connection.oidc_scopes,
        state=state,
        nonce=nonce,
        code_verifier=verifier,
    )


def _provider(ctx: Context, connection: SsoConnection) -> oidc.Provider:
    if not connection.oidc_discovery or not connection.oidc_issuer:
        raise federation.refuse(
            ctx,
            connection,
            "oidc_not_configured",
            message=MESSAGES["oidc_not_configured"],
        )
    try:
        return oidc.parse_discovery(
            connection.oidc_discovery,
            issuer=connection.oidc_issuer,
            rules=connections.fetch_rules(),
        )
    except oidc.OidcError as exc:
        # The operator's URL rules changed since the admin saved it.
        raise federation.refuse(
            ctx,
            connection,
            "oidc_not_configured",
            details={"cause": str(exc)[:200]},
            message=MESSAGES["oidc_not_configured"],
        ) from exc


def callback(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    *,
    args: Mapping[str, str],
    binding: str | None,
) -> tuple[Claims, SsoRequest]:
    """The IdP's answer at our redirect URI: the verified claims and the
    request they answer (used up), or SsoRefused (audited)."""
    if "error" in args:
        error = oidc.error_code(args.get("error")) or "unreadable"
        raise federation.refuse(
            ctx,
            connection,
            "oidc_idp_error",
            details={"error": error},
            message=_idp_error_message(error),
        )
    code, state = args.get("code"), args.get("state")
    if not code or not state:
        raise federation.refuse(
            ctx,
            connection,
            "oidc_malformed",
            message=MESSAGES["oidc_malformed"],
            status=400,
        )
    request = _use_request(ctx, connection, state, binding)
    provider = _provider(ctx, connection)
    _check_iss_parameter(ctx, connection, provider, args.get("iss"))
    id_token = _exchange(ctx, workspace, connection, provider, request, code)
    token = _verify(ctx, connection, provider, request, id_token)
    mapped = oidc_id_token.profile(token.claims, connection.attribute_map)
    claims = Claims.of(
        token.issuer,
        token.subject,
        mapped,
        details={"tenant": token.tenant} if token.tenant else {},
    )
    return claims, request


def _idp_error_message(error: str) -> str:
    if error == "access_denied":
        return "Your company's IdP did not sign you in: it refused, or the sign-in was cancelled."
    return f"Your company's IdP did not sign you in (it answered {error})."


def _use_request(
    ctx: Context, connection: SsoConnection, state: str, binding: str | None
) -> SsoRequest:
    try:
        request = sso_requests.find(connection, state, binding)
        sso_requests.use(request)
    except SsoRefused as exc:
        raise federation.refuse(
            ctx,
            connection,
            "oidc_state",
            details={"state": exc.code},
            message=exc.message,
        ) from exc
    # Used up for good before the IdP is asked anything: a replay of this
    # callback fails even if the code exchange below does.
    db.session.expunge(request)
    db.session.commit()
    return request


def _check_iss_parameter(
    ctx: Context,
    connection: SsoConnection,
    provider: oidc.Provider,
    iss: str | None,
) -> None:
    """RFC 9207: an IdP that names itself in its answer must name the one
    we sent the person to, before the code goes anywhere (mix-up)."""
    if iss is None:
        if not provider.sends_iss:
            return
    elif provider.tenant_template:
        tenants = connection.oidc_allowed_tenants or []
        if any(iss == provider.issuer_for(t) for t in tenants):
            return
    elif iss == provider.issuer:
        return
    raise federation.refuse(
        ctx,
        connection,
        "oidc_issuer",
        details={"iss": (iss or "missing")[:200]},
        message="The answer came from another IdP than the one this sign-in went to.",
    )


def _exchange(
    ctx: Context,
    workspace: Workspace,
    connection: SsoConnection,
    provider: oidc.Provider,
    request: SsoRequest,
    code: str,
) -> str:
    try:
        secret = connections.decrypt(connection.oidc_client_secret or "")
        verifier = connections.decrypt(request.code_verifier or "")
    except InvalidInput as exc:
        raise federation.refuse(
            ctx,
            connection,
            "oidc_not_configured",
            message=MESSAGES["oidc_not_configured"],
        ) from exc
    try:
        return oidc.exchange_code(
            provider,
            code=code,
            client_id=connection.oidc_client_id or "",
            client_secret=secret,
            redirect_uri=connections.oidc_redirect_uri(workspace),
            code_verifier=verifier,
            rules=connections.fetch_rules(),
        )
    except FetchError as exc:
        log.warning("sso.oidc_unreachable endpoint=token error=%s", exc)
        raise _unreachable(ctx, connection, "token", exc) from exc
    except oidc.OidcError as exc:
        raise federation.refuse(
            ctx,
            connection,
            exc.code,
            details=exc.details,
            message=MESSAGES["oidc_token_exchange_failed"],
        ) from exc


def _unreachable(
    ctx: Context, connection: SsoConnection, endpoint: str, exc: Exception
) -> SsoRefused:
    return federation.refuse(
        ctx,
        connection,
        "oidc_idp_unreachable",
        details={"endpoint": endpoint, "error": str(exc)[:200]},
        message=MESSAGES["oidc_idp_unreachable"],
        status=502,
    )


def _verify(
    ctx: Context,
    connection: SsoConnection,
    provider: oidc.Provider,
    request: SsoRequest,
    id_token: str,
) -> oidc_id_token.IdToken:
    config = settings()["sso"]
    jwks = _cached_jwks(ctx, connection, provider)
    for attempt in (1, 2):
        try:
            return oidc_id_token.verify_id_token(
                id_token,
                provider=provider,
                jwks=jwks,
                client_id=connection.oidc_client_id or "",
                nonce=request.nonce or "",
                now=now().timestamp(),
                skew_seconds=float(config["clock_skew_seconds"]),
                allowed_tenants=connection.oidc_allowed_tenants or [],
            )
        except oidc_id_token.UnknownKey as exc:
            # The IdP may have rotated its keys since we fetched them.
            if attempt == 2 or not _may_refetch(connection):
                raise federation.refuse(
                    ctx, connection, exc.code, details=exc.details, message=str(exc)
                ) from exc
            jwks = _fetch_jwks(ctx, connection, provider)
        except oidc.OidcError as exc:
            raise federation.refuse(
                ctx, connection, exc.code, details=exc.details, message=str(exc)
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _cached_jwks(
    ctx: Context, connection: SsoConnection, provider: oidc.Provider
) -> dict[str, Any]:
    fetched = connection.oidc_jwks_fetched_at
    lifetime = timedelta(seconds=int(settings()["sso"]["jwks_cache_seconds"]))
    if connection.oidc_jwks and fetched is not None and now() - fetched < lifetime:
        return connection.oidc_jwks
    return _fetch_jwks(ctx, connection, provider)


def _may_refetch(connection: SsoConnection) -> bool:
    fetched = connection.oidc_jwks_fetched_at
    return fetched is None or now() - fetched >= timedelta(seconds=JWKS_REFETCH_SECONDS)


def _fetch_jwks(
    ctx: Context, connection: SsoConnection, provider: oidc.Provider
) -> dict[str, Any]:
    try:
        jwks = oidc.fetch_jwks(provider.jwks_uri, connections.fetch_rules())
    except FetchError as exc:
        log.warning("sso.oidc_unreachable endpoint=jwks error=%s", exc)
        raise _unreachable(ctx, connection, "jwks", exc) from exc
    # Kept even when this sign-in is refused below (a refusal rolls back).
    connection.oidc_jwks = jwks
    connection.oidc_jwks_fetched_at = now()
    db.session.commit()
    return jwks
