"""Settings: packaged defaults, then an optional TOML file, then the environment.

Every key must exist in ``defaults.toml``; anything else stops start-up with
its name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "IDP_"
# Variables of ours that are not settings.
ENV_NOT_SETTINGS = frozenset({"IDP_CONFIG"})


# Settings whose value is a list of tables rather than of strings.
TABLE_LISTS = frozenset({"gateway.routes"})

ROUTE_KEYS = frozenset({"host", "path", "roles", "upstream"})
ROLES = ("admin", "read_only")
# Paths that are Portcullis's own on its public host: a route may not take
# them over.
OWN_PATHS = (
    "/login",
    "/logout",
    "/portal",
    "/auth",
    "/invite",
    "/reset",
    "/email",
    "/static",
    "/.well-known",
    "/healthz",
    "/readyz",
)


class SettingsError(Exception):
    """A setting is unknown or has a value of the wrong kind."""


def load_defaults() -> dict[str, Any]:
    text = resources.files("idp").joinpath("defaults.toml").read_text("utf-8")
    return tomllib.loads(text)


def _coerce(name: str, default: Any, value: Any) -> Any:
    """Turn ``value`` into the type of ``default``, or raise SettingsError."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif name in TABLE_LISTS:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise SettingsError(f"setting {name!r} is not valid JSON") from exc
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return value
    elif isinstance(default, list):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(default, str) and isinstance(value, str):
        return value
    raise SettingsError(f"setting {name!r} has an invalid value: {value!r}")


def _merge(into: dict[str, Any], overrides: Mapping[str, Any], origin: str) -> None:
    for key, value in overrides.items():
        if key not in into:
            raise SettingsError(f"unknown setting {key!r} in {origin}")
        if isinstance(into[key], dict):
            if not isinstance(value, Mapping):
                raise SettingsError(f"setting {key!r} in {origin} must be a table")
            for sub, subvalue in value.items():
                if sub not in into[key]:
                    raise SettingsError(f"unknown setting '{key}.{sub}' in {origin}")
                into[key][sub] = _coerce(f"{key}.{sub}", into[key][sub], subvalue)
        else:
            into[key] = _coerce(key, into[key], value)


def _env_overrides(
    defaults: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_SETTINGS:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        section, sep, key = name.partition("__")
        if sep:
            if (
                not isinstance(defaults.get(section), dict)
                or key not in defaults[section]
            ):
                raise SettingsError(f"unknown environment variable {var}")
            found.setdefault(section, {})[key] = value
        else:
            if name not in defaults or isinstance(defaults[name], dict):
                raise SettingsError(f"unknown environment variable {var}")
            found[name] = value
    return found


@dataclass(frozen=True)
class Settings:
    """All settings, validated; sections are plain dicts."""

    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, dotted: str) -> Any:
        section, _, key = dotted.partition(".")
        return self.values[section][key] if key else self.values[section]

    @property
    def public_url(self) -> str:
        return str(self.values["public_url"]).rstrip("/")

    @property
    def public_scheme(self) -> str:
        return urlsplit(self.public_url).scheme

    @property
    def public_host(self) -> str:
        return urlsplit(self.public_url).hostname or "localhost"

    @property
    def public_origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def webauthn_rp_id(self) -> str:
        return str(self.values["webauthn"]["rp_id"] or self.public_host).lower()

    @property
    def webauthn_origins(self) -> tuple[str, ...]:
        return tuple(self.values["webauthn"]["origins"]) or (self.public_origin,)

    @property
    def webauthn_available(self) -> bool:
        """WebAuthn refuses an IP address as relying party id."""
        return not _is_ip(self.webauthn_rp_id)

    @property
    def instance_dir(self) -> Path:
        return Path(self.values["instance_dir"]).resolve()

    @property
    def keys_dir(self) -> Path:
        return Path(self.values["keys_dir"]).resolve()

    @property
    def database_url(self) -> str:
        url = self.values["database_url"]
        if url:
            return str(url)
        return f"sqlite:///{self.instance_dir / 'portcullis.sqlite3'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _validate(values: dict[str, Any]) -> None:
    parts = urlsplit(values["public_url"])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("public_url must be an http or https URL with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SettingsError("public_url must not have a path, query or fragment")
    smtp = values["smtp_url"]
    if smtp and urlsplit(smtp).scheme not in ("smtp", "smtp+starttls", "smtps"):
        raise SettingsError(
            "smtp_url must start with smtp://, smtp+starttls:// or smtps://"
        )
    pw = values["passwords"]
    if pw["min_length"] < 8:
        raise SettingsError("passwords.min_length must be at least 8")
    if not pw["min_length"] <= pw["max_length"] <= 4096:
        raise SettingsError("passwords.max_length must be between min_length and 4096")
    if values["signin"]["hash_concurrency"] < 1:
        raise SettingsError("signin.hash_concurrency must be at least 1")
    for entry in values["gateway"]["trusted_proxies"]:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise SettingsError(
                f"gateway.trusted_proxies: {entry!r} is not an address or range"
            ) from exc
    _validate_routes(values)
    _validate_cookie_domain(values)
    _validate_webauthn(values)
    _validate_sso(values)
    if values["log"]["format"] not in ("text", "json"):
        raise SettingsError('log.format must be "text" or "json"')


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _within(host: str, rp_id: str) -> bool:
    return host == rp_id or host.endswith("." + rp_id)


def _validate_webauthn(values: dict[str, Any]) -> None:
    """The relying party id must be the public host or a parent domain of
    it, and every allowed origin an exact http(s) origin under it (MFA-3)."""
    section = values["webauthn"]
    host = (urlsplit(values["public_url"]).hostname or "").lower()
    rp_id = str(section["rp_id"] or host).lower()
    if section["rp_id"] and (_is_ip(rp_id) or not _within(host, rp_id)):
        raise SettingsError(
            f"webauthn.rp_id {rp_id} must be the public URL's host or a parent "
            "domain of it"
        )
    for origin in section["origins"]:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or origin != origin.strip()
        ):
            raise SettingsError(
                f"webauthn.origins: {origin!r} must be a scheme and host (and "
                "port), such as https://auth.example.com"
            )
        if not _within(parts.hostname.lower(), rp_id):
            raise SettingsError(
                f"webauthn.origins: {origin} is not under the relying party id {rp_id}"
            )
    if section["challenge_seconds"] < 30:
        raise SettingsError("webauthn.challenge_seconds must be at least 30")
    mfa = values["mfa"]
    if mfa["recent_auth_minutes"] < 1 or mfa["failure_limit"] < 1:
        raise SettingsError(
            "mfa.recent_auth_minutes and mfa.failure_limit must be at least 1"
        )


def _validate_sso(values: dict[str, Any]) -> None:
    sso = values["sso"]
    if not 0 <= sso["clock_skew_seconds"] <= 600:
        raise SettingsError("sso.clock_skew_seconds must be between 0 and 600")
    if not 60 <= sso["request_seconds"] <= 3600:
        raise SettingsError("sso.request_seconds must be between 60 and 3600")
    if not 1 <= sso["fetch_timeout_seconds"] <= 60:
        raise SettingsError("sso.fetch_timeout_seconds must be between 1 and 60")
    if not 1024 <= sso["fetch_max_bytes"] <= 16 * 1024 * 1024:
        raise SettingsError("sso.fetch_max_bytes must be between 1 KiB and 16 MiB")
    if sso["jwks_cache_seconds"] < 60:
        raise SettingsError("sso.jwks_cache_seconds must be at least 60")
    for server in sso["dns_nameservers"]:
        if not _is_ip(server):
            raise SettingsError(f"sso.dns_nameservers: {server!r} is not an IP address")


def _validate_cookie_domain(values: dict[str, Any]) -> None:
    """A cookie for a domain that does not hold the public host is dropped
    by every browser: nobody could ever stay signed in."""
    domain = values["sessions"]["cookie_domain"].lower().strip(".")
    public_host = (urlsplit(values["public_url"]).hostname or "").lower()
    if domain and public_host != domain and not public_host.endswith("." + domain):
        raise SettingsError(
            f"sessions.cookie_domain {domain} must be the public URL's host "
            f"({public_host}) or a domain above it"
        )


def _overlaps_own(path: str) -> bool:
    # Routes match paths regardless of case (gateway._covers): /Login would
    # take /login.
    prefix = path.rstrip("/").lower() + "/"
    return any(
        (own + "/").startswith(prefix) or prefix.startswith(own + "/")
        for own in OWN_PATHS
    )


def _validate_routes(values: dict[str, Any]) -> None:
    public_host = (urlsplit(values["public_url"]).hostname or "").lower()
    routes = []
    for number, route in enumerate(values["gateway"]["routes"], start=1):
        where = f"gateway.routes[{number}]"
        unknown = set(route) - ROUTE_KEYS
        if unknown:
            raise SettingsError(f"{where}: unknown key {min(unknown)!r}")
        host = route.get("host")
        if not isinstance(host, str) or not host or "/" in host or ":" in host:
            raise SettingsError(f"{where}: host must be a host name without a port")
        path = route.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/"):
            raise SettingsError(f"{where}: path must start with /")
        roles = route.get("roles", list(ROLES))
        if (
            not isinstance(roles, list)
            or not roles
            or any(role not in ROLES for role in roles)
        ):
            raise SettingsError(f"{where}: roles must be a list of {', '.join(ROLES)}")
        upstream = route.get("upstream")
        if upstream is not None:
            parts = urlsplit(upstream) if isinstance(upstream, str) else None
            if (
                parts is None
                or parts.scheme not in ("http", "https")
                or not parts.hostname
            ):
                raise SettingsError(f"{where}: upstream must be an http or https URL")
            if parts.query or parts.fragment:
                raise SettingsError(f"{where}: upstream must not have a query")
        host = host.lower().rstrip(".")
        if upstream is not None and host == public_host and _overlaps_own(path):
            raise SettingsError(
                f"{where}: {path} on the public host overlaps Portcullis's own pages"
            )
        routes.append(
            {"host": host, "path": path, "roles": list(roles), "upstream": upstream}
        )
    values["gateway"]["routes"] = routes


def load_settings(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the file named by IDP_CONFIG, then IDP_ variables, then
    ``overrides`` (tests)."""
    environ = os.environ if environ is None else environ
    values = load_defaults()
    config_file = environ.get("IDP_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                _merge(values, tomllib.load(fh), config_file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read {config_file}: {exc}") from exc
    _merge(values, _env_overrides(values, environ), "the environment")
    if overrides:
        _merge(values, overrides, "overrides")
    _validate(values)
    return Settings(values)
