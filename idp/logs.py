"""One logger per module; each line carries the request id. JSON on demand."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from flask import g, has_request_context


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def _escape(text: str) -> str:
    # CR, LF and other control characters could forge log lines (ASVS 16.4.1).
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        line = (
            f"{stamp} {record.levelname} {record.name} [{record.request_id}] "
            + _escape(record.getMessage())
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "request_id": record.request_id,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("idp")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # pysaml2 logs an ERROR for each signature xmlsec1 refuses, including
    # the expected miss when a rollover's other certificate is tried first;
    # the refusal itself is ours to report (audit sso.signin_failure).
    logging.getLogger("saml2").setLevel(logging.CRITICAL)
