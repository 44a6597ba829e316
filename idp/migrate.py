"""Schema migrations with Alembic, from the package's own scripts."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from idp.db import db


def alembic_config() -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("idp") / "migrations")
    )
    return config


def upgrade() -> None:
    """Bring the application's database to the newest schema (app context)."""
    config = alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def is_current() -> bool:
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with db.engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads()) == heads
