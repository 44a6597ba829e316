"""Errors that services raise and adapters turn into answers.

Each carries the HTTP status an adapter should use, a message fit to show
the person, and a reason code for the audit log and the operator's logs.
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    default_code = "invalid"

    def __init__(
        self, message: str, *, code: str | None = None, audited: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        # True when the service already wrote the refusal's audit event;
        # adapters write a generic one for every other refusal.
        self.audited = audited


class InvalidInput(ServiceError):
    status = 400
    default_code = "invalid_input"


class NotFound(ServiceError):
    status = 404
    default_code = "not_found"


class Forbidden(ServiceError):
    status = 403
    default_code = "forbidden"


class Conflict(ServiceError):
    status = 409
    default_code = "conflict"


class InvalidLink(ServiceError):
    """Every bad invitation, reset or confirmation link looks the same."""

    status = 400
    default_code = "invalid_link"

    def __init__(self, code: str = "invalid_link", *, audited: bool = False) -> None:
        super().__init__(
            "This link is invalid or has expired.", code=code, audited=audited
        )


class Throttled(ServiceError):
    status = 429
    default_code = "throttled"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        code: str | None = None,
        audited: bool = False,
    ) -> None:
        super().__init__(message, code=code, audited=audited)
        self.retry_after = retry_after


class Busy(Throttled):
    default_code = "busy"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after, code="busy")


class Unavailable(ServiceError):
    status = 503
    default_code = "unavailable"
