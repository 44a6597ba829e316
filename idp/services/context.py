"""Who is acting, from where. Every service call takes one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from idp.models import Session, User


@dataclass(frozen=True)
class Client:
    ip: str | None = None
    peer_ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Context:
    """The acting party. ``user`` is None for anonymous visitors and the
    operator's CLI."""

    actor_type: str
    client: Client = field(default_factory=Client)
    user: User | None = None
    session: Session | None = None
    label: str = ""

    @classmethod
    def anonymous(cls, client: Client) -> Context:
        return cls("anonymous", client, label="anonymous")

    @classmethod
    def operator(cls) -> Context:
        return cls("operator", Client(), label="operator (CLI)")

    @classmethod
    def for_user(
        cls, user: User, client: Client, session: Session | None = None
    ) -> Context:
        return cls("user", client, user=user, session=session, label=user.email)

    @property
    def actor_id(self) -> str | None:
        return str(self.user.id) if self.user is not None else None
