"""A browser as far as the gateway tests need one: cookies, redirects and
forms, over urllib."""

from __future__ import annotations

import functools
import http.client
import http.cookiejar
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser
from typing import Any

from idp.gateway.forward import IDENTITY_HEADERS

# Accept headers as a browser and as an API client send them.
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
JSON = "application/json"


@dataclass
class Answer:
    status: int
    url: str
    headers: Message
    body: str

    def identity_headers(self) -> list[str]:
        return [name for name in IDENTITY_HEADERS if name in self.headers]


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _From(urllib.request.HTTPHandler):
    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connect = functools.partial(
            http.client.HTTPConnection, source_address=(self.source, 0)
        )
        return self.do_open(connect, req)


class Client:
    """A browser as far as cookies, redirects and forms go. Cookies are not
    port-specific, so one signed in at Portcullis is signed in at every
    proxy on localhost, as with a parent-domain cookie in production."""

    def __init__(self, source: str | None = None) -> None:
        """``source``: the loopback address to connect from (127.0.0.2, say),
        so that a proxy sees a client that is not a trusted proxy."""
        self.jar = http.cookiejar.CookieJar()
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPCookieProcessor(self.jar)
        ]
        if source is not None:
            handlers.append(_From(source))
        self._follow = urllib.request.build_opener(*handlers)
        self._stay = urllib.request.build_opener(*handlers, _Stay())

    def get(
        self, url: str, headers: dict[str, str] | None = None, *, follow: bool = True
    ) -> Answer:
        return self._open(url, None, headers, follow)

    def post(
        self,
        url: str,
        fields: dict[str, str] | bytes,
        headers: dict[str, str] | None = None,
        *,
        follow: bool = True,
    ) -> Answer:
        data = (
            fields
            if isinstance(fields, bytes)
            else urllib.parse.urlencode(fields).encode()
        )
        return self._open(url, data, headers, follow)

    def submit(self, page: Answer, fields: dict[str, str]) -> Answer:
        """Fill the page's POST form that has every field named, keeping its
        hidden values (CSRF token, return URL), and send it."""
        for form in _forms(page.body):
            if set(fields) <= set(form.fields):
                target = urllib.parse.urljoin(page.url, form.action or page.url)
                return self.post(target, {**form.fields, **fields})
        raise AssertionError(f"no form with {sorted(fields)} on {page.url}")

    def cookie(self, name: str) -> str | None:
        for cookie in self.jar:
            if cookie.name == name:
                return cookie.value
        return None

    def _open(
        self,
        url: str,
        data: bytes | None,
        headers: dict[str, str] | None,
        follow: bool,
    ) -> Answer:
        request = urllib.request.Request(url, data=data, headers=headers or {})
        opener = self._follow if follow else self._stay
        try:
            with opener.open(request, timeout=15) as response:
                return Answer(
                    response.status,
                    response.url,
                    response.headers,
                    response.read().decode(errors="replace"),
                )
        except urllib.error.HTTPError as error:
            with error:
                return Answer(
                    error.code,
                    error.url,
                    error.headers,
                    error.read().decode(errors="replace"),
                )


@dataclass
class _Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self._form: _Form | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "form" and a.get("method", "get").lower() == "post":
            self._form = _Form(a.get("action", ""))
            self.forms.append(self._form)
        if self._form is None or not a.get("name"):
            return
        if tag == "input" and a.get("type") not in ("submit", "button", "checkbox"):
            self._form.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = a["name"]
            self._form.fields[a["name"]] = ""
        elif tag == "textarea":
            self._form.fields[a["name"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def _forms(html: str) -> list[_Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms
