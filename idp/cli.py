"""The `idp` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import resources

from idp.settings import SettingsError, load_settings

# security_policy.MFA_MODES, spelled out so that building the parser imports
# no database code; a test keeps the two equal.
MFA_MODES = ("off", "force", "force_except_sso")


def _fail(message: str, code: int = 2) -> int:
    print(f"idp: {message}", file=sys.stderr)
    return code


def _app():  # type: ignore[no-untyped-def]
    from idp.app import create_app

    return create_app(load_settings())


def cmd_init(args: argparse.Namespace) -> int:
    from idp.keys import ensure_keys

    settings = load_settings()
    made = ensure_keys(settings.keys_dir)
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    # The SQLite file holds password hashes, and the outbox holds links.
    os.chmod(settings.instance_dir, 0o700)
    app = _app()
    with app.app_context():
        from idp import migrate

        migrate.upgrade()
    for path in made:
        print(f"created key {path}")
    where = (
        settings.database_url
        if not settings.is_sqlite
        else str(settings.instance_dir / "portcullis.sqlite3")
    )
    if not args.quiet:
        print(f"database ready: {_redact(where)}")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a path, not a URL
        return url


def cmd_workspace_create(args: argparse.Namespace) -> int:
    from idp.services.context import Context
    from idp.services.workspaces import create_workspace

    with _app().app_context():
        workspace = create_workspace(Context.operator(), args.name)
        print(workspace.slug)
    return 0


def _printable(text: str) -> str:
    """Text from the database as one terminal-safe line: control and
    formatting characters (escape sequences, bidi overrides) are escaped."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in text
    )


def _security_lines(workspace) -> list[str]:  # type: ignore[no-untyped-def]
    from idp.services import security_policy

    def limit(value: int | None) -> str:
        return "off" if value is None else str(value)

    def on_off(enabled: bool) -> str:
        return "on" if enabled else "off"

    policy = security_policy.current_policy(workspace)
    idle = "off"
    if policy.idle_timeout_seconds is not None:
        duration = security_policy.as_duration(policy.idle_timeout_seconds)
        unit = duration.unit[:-1] if duration.amount == 1 else duration.unit
        idle = f"{duration.amount} {unit}"
    lines = [
        f"workspace: {_printable(workspace.slug)}",
        f"name: {_printable(workspace.name)}",
        f"mfa: {policy.mfa_mode}",
        f"idle timeout: {idle}",
        f"max sessions: {limit(policy.max_sessions)}",
        f"re-login days: {limit(policy.relogin_days)}",
        f"ip restriction: {on_off(policy.ip_restriction_enabled)}",
    ]
    ips = security_policy.ip_entries(workspace)
    for ip in ips:
        note = f"  {_printable(ip.description)}" if ip.description else ""
        lines.append(f"ip allow: {ip.network}{note}")
    if not ips:
        lines.append("ip allow: (none)")
    lines.append(f"domain restriction: {on_off(policy.domain_restriction_enabled)}")
    domains = security_policy.domain_entries(workspace)
    for entry in domains:
        under = "  and subdomains" if entry.include_subdomains else ""
        lines.append(f"domain allow: {_printable(entry.domain)}{under}")
    if not domains:
        lines.append("domain allow: (none)")
    return lines


def cmd_workspace_security(args: argparse.Namespace) -> int:
    """Show a workspace's security policy, or switch off what locks members
    out: the operator's break-glass when no admin can sign in."""
    from idp.services import security_policy
    from idp.services.context import Context
    from idp.services.errors import NotFound
    from idp.services.workspaces import get_workspace

    with _app().app_context():
        try:
            workspace = get_workspace(args.slug)
        except NotFound as exc:
            return _fail(exc.message)
        ctx = Context.operator()
        policy = security_policy.current_policy(workspace)
        changes = []
        if args.mfa is not None:
            old = policy.mfa_mode
            security_policy.set_mfa_mode(ctx, workspace, args.mfa)
            changes.append(("mfa", old, args.mfa))
        if args.ip_restriction is not None:
            old = "on" if policy.ip_restriction_enabled else "off"
            security_policy.set_ip_restriction(ctx, workspace, False)
            changes.append(("ip restriction", old, "off"))
        if args.domain_restriction is not None:
            old = "on" if policy.domain_restriction_enabled else "off"
            security_policy.set_domain_restriction(ctx, workspace, False)
            changes.append(("domain restriction", old, "off"))
        if not changes:
            print("\n".join(_security_lines(workspace)))
        for key, old, new in changes:
            print(
                f"{key}: {old} -> {new}" if old != new else f"{key}: {new} (unchanged)"
            )
    return 0


def cmd_admin_create(args: argparse.Namespace) -> int:
    from idp.services.context import Context
    from idp.services.invitations import invite_user
    from idp.services.workspaces import get_workspace

    with _app().app_context():
        workspace = get_workspace(args.workspace)
        issued = invite_user(
            Context.operator(),
            workspace,
            email=args.email,
            role="admin",
            full_name=args.name or "",
            setup=True,
            send_mail=False,
        )
        print(issued.link)
    return 0


def cmd_user_reset_mfa(args: argparse.Namespace) -> int:
    """Remove a member's factors: the operator's way back in for an admin
    who lost them while the workspace forces MFA."""
    import sqlalchemy as sa

    from idp.db import db
    from idp.models import User
    from idp.security import normalize_email
    from idp.services import users
    from idp.services.context import Context
    from idp.services.errors import Conflict, NotFound
    from idp.services.workspaces import get_workspace

    with _app().app_context():
        try:
            workspace = get_workspace(args.workspace)
        except NotFound as exc:
            return _fail(exc.message)
        member = db.session.scalar(
            sa.select(User).where(
                User.workspace_id == workspace.id,
                User.email == normalize_email(args.email),
            )
        )
        if member is None:
            return _fail(f"There is no member {args.email} in {workspace.slug}.")
        try:
            users.reset_mfa(Context.operator(), workspace, member.id)
        except Conflict as exc:
            return _fail(exc.message)
        print(f"mfa reset: {member.email} (sessions ended, member told by email)")
    return 0


def _domain_line(entry, slug: str) -> str:  # type: ignore[no-untyped-def]
    from idp.services.sso import domains

    if entry.verified_at is not None:
        when = entry.verified_at.strftime("%Y-%m-%d")
        status = f"verified by {entry.verified_by} {when}"
    else:
        status = (
            f"pending: TXT {domains.record_name(entry)} {domains.record_value(entry)}"
        )
    return f"{_printable(slug)}  {entry.domain}  {status}"


def _verified_holder(domain: str) -> str | None:
    """The slug of the workspace the domain is verified for, if any."""
    import sqlalchemy as sa

    from idp.db import db
    from idp.models import SsoDomain, Workspace

    return db.session.scalar(
        sa.select(Workspace.slug)
        .join(SsoDomain, SsoDomain.workspace_id == Workspace.id)
        .where(SsoDomain.domain == domain, SsoDomain.verified_at.is_not(None))
    )


def cmd_domain_approve(args: argparse.Namespace) -> int:
    """Verify a claimed email domain for a workspace, as the operator: for
    a company that cannot publish the DNS record."""
    from idp.services.context import Context
    from idp.services.errors import NotFound
    from idp.services.sso import connections, domains
    from idp.services.workspaces import get_workspace

    with _app().app_context():
        workspace = get_workspace(args.workspace)
        if connections.for_workspace(workspace.id) is None:
            return _fail(
                f"{workspace.slug} has no SSO connection: an admin connects the "
                "IdP on the SSO tab first.",
                1,
            )
        name = domains.normalize_domain(args.domain)
        holder = _verified_holder(name)
        if holder is not None and holder != workspace.slug:
            # Checked before the claim, so a refusal leaves nothing behind.
            return _fail(
                f"{name} is already verified for another workspace "
                f"({_printable(holder)}); remove it there first.",
                1,
            )
        try:
            entry = domains.approve(Context.operator(), workspace, name)
        except NotFound as exc:
            return _fail(exc.message, 1)
        by = "dns" if entry.verified_by == "dns" else "the operator"
        print(f"verified: {entry.domain} for {_printable(workspace.slug)} (by {by})")
    return 0


def cmd_domain_list(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from idp.db import db
    from idp.models import SsoDomain, Workspace
    from idp.services.workspaces import get_workspace

    with _app().app_context():
        query = (
            sa.select(SsoDomain, Workspace.slug)
            .join(Workspace, Workspace.id == SsoDomain.workspace_id)
            .order_by(Workspace.slug, SsoDomain.domain)
        )
        if args.workspace:
            query = query.where(
                SsoDomain.workspace_id == get_workspace(args.workspace).id
            )
        rows = db.session.execute(query).all()
        for entry, slug in rows:
            print(_domain_line(entry, slug))
        if not rows:
            print("(no domains)")
    return 0


def cmd_domain_remove(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from idp.db import db
    from idp.models import SsoDomain
    from idp.services.context import Context
    from idp.services.errors import InvalidInput
    from idp.services.sso import domains
    from idp.services.workspaces import get_workspace

    with _app().app_context():
        workspace = get_workspace(args.workspace)
        try:
            name = domains.normalize_domain(args.domain)
        except InvalidInput as exc:
            return _fail(exc.message, 1)
        entry_id = db.session.scalar(
            sa.select(SsoDomain.id).where(
                SsoDomain.workspace_id == workspace.id, SsoDomain.domain == name
            )
        )
        if entry_id is None:
            return _fail(f"{name} is not a domain of {workspace.slug}.", 1)
        domains.remove(Context.operator(), workspace, entry_id)
        print(f"removed: {name} from {_printable(workspace.slug)}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from idp.keys import rotate_keys

    for path in rotate_keys(load_settings().keys_dir):
        print(f"created key {path}")
    return 0


def _gunicorn_argv(host: str, port: int, workers: int, threads: int) -> list[str]:
    conf = resources.files("idp") / "gunicorn_conf.py"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(conf),
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "idp.wsgi:app",
    ]


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    server = settings["server"]
    host = args.host or server["host"]
    port = server["port"] if args.port is None else args.port
    workers = server["workers"] if args.workers is None else args.workers
    if not 0 < port < 65536:
        return _fail(f"--port must be between 1 and 65535, not {port}")
    if workers < 1:
        return _fail("--workers must be at least 1")
    # Keys and schema before any worker starts, so workers never race.
    cmd_init(argparse.Namespace(quiet=True))
    shown = "localhost" if host in ("127.0.0.1", "::1", "localhost") else host
    print(
        f"Portcullis is running at http://{shown}:{port}  (public URL {settings.public_url})",
        flush=True,
    )
    if args.dev:
        app = _app()
        app.run(host=host, port=port, use_reloader=True, debug=False, threaded=True)
        return 0
    argv = _gunicorn_argv(host, port, workers, server["threads"])
    # Each argon2 verification allocates 19 MiB. Above this threshold glibc
    # maps such buffers on their own and returns them when freed, instead of
    # keeping them in per-thread pools (measured: 467 MiB after a burst of
    # sign-ins with the default, 183 MiB with this).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * 1024 * 1024))
    os.execv(argv[0], argv)
    return 0  # not reached


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Everything a first look needs: keys, database, a workspace with a
    first admin, the set-up link, and the server."""
    if "IDP_PUBLIC_URL" not in os.environ and "IDP_CONFIG" not in os.environ:
        # Links must point where this server listens.
        os.environ["IDP_PUBLIC_URL"] = f"http://localhost:{args.port}"
    cmd_init(argparse.Namespace(quiet=True))
    import sqlalchemy as sa

    from idp.db import db
    from idp.models import User, Workspace
    from idp.services.context import Context
    from idp.services.invitations import invite_user, resend_invitation
    from idp.services.workspaces import create_workspace

    with _app().app_context():
        workspace = db.session.scalar(
            sa.select(Workspace).order_by(Workspace.created_at)
        )
        if workspace is None:
            workspace = create_workspace(Context.operator(), args.workspace)
            print(f"Created workspace {workspace.name!r} (slug {workspace.slug})")
        admins = list(
            db.session.scalars(
                sa.select(User)
                .where(User.workspace_id == workspace.id, User.role == "admin")
                .order_by(User.created_at)
            )
        )
        active = next((a for a in admins if a.status == "active"), None)
        pending = next((a for a in admins if a.status == "invited"), None)
        link = admin_email = None
        if active is None and pending is not None:
            admin_email = pending.email
            link = resend_invitation(
                Context.operator(), workspace, pending.id, send_mail=False
            ).link
        elif active is None:
            issued = invite_user(
                Context.operator(),
                workspace,
                email=args.admin,
                role="admin",
                full_name="",
                setup=True,
                send_mail=False,
            )
            admin_email, link = issued.user.email, issued.link
        public_url = load_settings().public_url
    if link:
        print(
            f"\nSet up the first admin ({admin_email}) by opening:\n    {link}\n",
            flush=True,
        )
    else:
        print(
            f"\nThe workspace already has an admin; sign in at {public_url}/login\n",
            flush=True,
        )
    return cmd_serve(
        argparse.Namespace(host="127.0.0.1", port=args.port, workers=None, dev=False)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idp", description="Portcullis identity provider"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init", help="create keys, the instance folder and the database schema"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the server with gunicorn")
    p.add_argument("--host", help="address to listen on (default from [server])")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default 2)")
    p.add_argument(
        "--dev", action="store_true", help="Flask's reloading server, for development"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "quickstart", help="init, first workspace and admin link, then serve"
    )
    p.add_argument("--workspace", default="Example", help="name of the first workspace")
    p.add_argument(
        "--admin", default="admin@example.com", help="email of the first admin"
    )
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_quickstart)

    ws = sub.add_parser("workspace", help="manage workspaces").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = ws.add_parser("create", help="create a workspace and print its slug")
    p.add_argument("name")
    p.set_defaults(func=cmd_workspace_create)
    p = ws.add_parser(
        "security",
        help="show the security policy, or turn off what locks members out",
        description="Without options, print the workspace's security policy. "
        "Each option changes one setting as the operator, audited with its old "
        "and new value.",
    )
    p.add_argument("slug", metavar="SLUG")
    p.add_argument("--mfa", choices=MFA_MODES, help="set Force MFA")
    p.add_argument(
        "--ip-restriction", choices=["off"], help="turn the IP allow-list off"
    )
    p.add_argument(
        "--domain-restriction",
        choices=["off"],
        help="turn the email-domain allow-list off",
    )
    p.set_defaults(func=cmd_workspace_security)

    adm = sub.add_parser("admin", help="manage admins").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = adm.add_parser(
        "create", help="create an admin and print a one-time set-up link"
    )
    p.add_argument("--workspace", required=True, metavar="SLUG")
    p.add_argument("--name", default="", help="the admin's full name")
    p.add_argument("email")
    p.set_defaults(func=cmd_admin_create)

    usr = sub.add_parser("user", help="manage members").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = usr.add_parser(
        "reset-mfa",
        help="remove a member's factors and recovery codes and end their sessions",
    )
    p.add_argument("--workspace", required=True, metavar="SLUG")
    p.add_argument("email")
    p.set_defaults(func=cmd_user_reset_mfa)

    dom = sub.add_parser(
        "domain", help="email domains of workspaces' SSO connections"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dom.add_parser(
        "approve",
        help="verify a domain for a workspace's SSO connection, as the operator",
        description="Claim the domain for the workspace if it has not, and "
        "verify it without the DNS record: email addresses in it then sign in "
        "through the workspace's IdP. A domain is verified for one workspace "
        "only.",
    )
    p.add_argument("--workspace", required=True, metavar="SLUG")
    p.add_argument("domain", metavar="DOMAIN")
    p.set_defaults(func=cmd_domain_approve)
    p = dom.add_parser(
        "list", help="list claimed domains, verified or with the TXT record asked for"
    )
    p.add_argument("--workspace", metavar="SLUG")
    p.set_defaults(func=cmd_domain_list)
    p = dom.add_parser("remove", help="remove a domain from a workspace's connection")
    p.add_argument("--workspace", required=True, metavar="SLUG")
    p.add_argument("domain", metavar="DOMAIN")
    p.set_defaults(func=cmd_domain_remove)

    keys = sub.add_parser("keys", help="manage key material").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = keys.add_parser(
        "rotate", help="add a new key of each kind; old ones keep verifying"
    )
    p.set_defaults(func=cmd_keys_rotate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from idp.services.errors import ServiceError

    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        return _fail(f"settings: {exc}")
    except ServiceError as exc:
        return _fail(exc.message, 1)
    except Exception as exc:
        import sqlalchemy as sa

        from idp.keys import KeysMissing

        if isinstance(exc, (KeysMissing, sa.exc.OperationalError)):
            return _fail(str(exc).splitlines()[0], 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
