"""The pure parts of the audit log: CSV cells, filter parsing, the page
cursor. The database side is in tests/integration/test_audit_logs.py."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest

from idp.services.audit_query import CSV_HEADER, MAX_QUERY, Filters, _cell
from idp.web.portal.audit_logs import _cursor


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (None, ""),
        ("", ""),
        (42, "42"),
        ("plain text", "plain text"),
        ("=CMD|' /C calc'!A0", "'=CMD|' /C calc'!A0"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(1)", "'@SUM(1)"),
        ("a=b", "a=b"),
        (" =1", " =1"),
        ("\t=1", "\\x09=1"),
        ("\r\n=1", "\\x0d\\x0a=1"),
        ("a\nb", "a\\x0ab"),
        ("\x00\x1f\x7f", "\\x00\\x1f\\x7f"),
        ("\x85next-line", "\\x85next-line"),
        ("para\u2029sep", "para\\x2029sep"),
        ("naïve café", "naïve café"),
    ],
    ids=[
        "none",
        "empty",
        "int",
        "plain",
        "dde",
        "plus",
        "minus",
        "at",
        "inner-equals",
        "space-equals",
        "tab-equals",
        "crlf-equals",
        "newline",
        "c0-and-del",
        "c1-nel",
        "paragraph-separator",
        "accents",
    ],
)
def test_cell(value, cell):
    assert _cell(value) == cell


def _write(rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


HOSTILE = [
    "a,b",
    'say "hi"',
    "two\nlines",
    "cr\ronly",
    '",=1',
    "=1,2",
    "\x00",
    "-",
    "@",
]


def test_rows_round_trip_as_rfc_4180():
    rows = [[text, "x"] for text in HOSTILE]
    body = _write(rows)
    # Records end in CRLF and nothing else breaks a line.
    assert body.endswith("\r\n")
    assert body.count("\r\n") == len(rows) + 1
    assert "\n" not in body.replace("\r\n", "") and "\r" not in body.replace("\r\n", "")
    parsed = list(csv.reader(io.StringIO(body, newline="")))
    assert parsed[1:] == [[_cell(text), "x"] for text in HOSTILE]
    assert not any(
        cell[:1] in ("=", "+", "-", "@") for row in parsed[1:] for cell in row
    )


def test_quoting_follows_rfc_4180():
    body = _write([["a,b", 'say "hi"', "plain"]])
    assert body.split("\r\n")[1] == '"a,b","say ""hi""",plain'


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, Filters()),
        ({"q": "  Ann   Admin \t"}, Filters(text="Ann Admin")),
        ({"q": "a\x00b\x1bc"}, Filters(text="abc")),
        ({"q": "x" * 1000}, Filters(text="x" * MAX_QUERY)),
        ({"actor": " bob@example.com "}, Filters(actor="bob@example.com")),
        ({"actor": "b\x00ob"}, Filters(actor="bob")),
        ({"action": "user.disable"}, Filters(action="user.disable")),
        ({"action": "user.nope"}, Filters()),
        ({"action": "USER.DISABLE"}, Filters()),
        (
            {"from": "2024-02-29", "to": "2024-03-01"},
            Filters(since=date(2024, 2, 29), until=date(2024, 3, 1)),
        ),
        ({"from": "2023-02-29"}, Filters()),
        ({"from": "yesterday", "to": "2024-13-01"}, Filters()),
        ({"to": "9999-12-31"}, Filters(until=date.max)),
    ],
    ids=[
        "empty",
        "spaces",
        "controls",
        "long",
        "actor-trim",
        "actor-nul",
        "known-action",
        "unknown-action",
        "action-case",
        "dates",
        "not-leap",
        "bad-dates",
        "last-day",
    ],
)
def test_filters_parse(args, expected):
    assert Filters.parse(args) == expected


def test_filters_survive_a_round_trip_through_the_query_string():
    filters = Filters(
        text="a b",
        action="signin.failure",
        actor="ann",
        since=date(2024, 1, 1),
        until=date(2024, 1, 31),
    )
    assert Filters.parse(filters.as_args()) == filters
    assert Filters().as_args() == {}


@pytest.mark.parametrize(
    ("value", "cursor"),
    [
        ("", None),
        ("0", 0),
        ("17", 17),
        ("007", 7),
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), None),
        ("9" * 19, None),
        ("1" * 20, None),
        ("-1", None),
        ("+1", None),
        ("1.0", None),
        ("1e3", None),
        (" 1", None),
        ("0x1", None),
        ("²", None),
        ("١٢", None),
        ("１２", None),
    ],
    ids=[
        "empty",
        "zero",
        "small",
        "leading-zeros",
        "max",
        "max+1",
        "19-nines",
        "20-digits",
        "negative",
        "plus",
        "decimal",
        "exponent",
        "space",
        "hex",
        "superscript",
        "arabic-indic",
        "fullwidth",
    ],
)
def test_cursor(value, cursor):
    assert _cursor(value) == cursor
