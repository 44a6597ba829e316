"""Creating and finding workspaces (operator actions)."""

from __future__ import annotations

import re
import unicodedata

import sqlalchemy as sa

from idp.db import db
from idp.models import SecurityPolicy, Workspace
from idp.services import audit
from idp.services.context import Context
from idp.services.errors import InvalidInput, NotFound

SLUG_MAX = 48


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:SLUG_MAX].strip("-")


def create_workspace(ctx: Context, name: str) -> Workspace:
    """A new workspace with a unique slug derived from its name."""
    name = " ".join(name.split())
    if not name or len(name) > 200:
        raise InvalidInput("A workspace name needs 1 to 200 characters.")
    base = slugify(name) or "workspace"
    slug, n = base, 1
    while db.session.scalar(sa.select(Workspace.id).where(Workspace.slug == slug)):
        n += 1
        slug = f"{base}-{n}"
    workspace = Workspace(name=name, slug=slug)
    workspace.policy = SecurityPolicy()
    db.session.add(workspace)
    db.session.flush()
    audit.record(ctx, "workspace.create", workspace_id=workspace.id, target=workspace)
    db.session.commit()
    return workspace


def get_workspace(slug: str) -> Workspace:
    workspace = db.session.scalar(sa.select(Workspace).where(Workspace.slug == slug))
    if workspace is None:
        raise NotFound(f"There is no workspace {slug!r}.")
    return workspace
