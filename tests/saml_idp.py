"""A SAML 2.0 identity provider for the tests, built on pysaml2's Server
with a key pair of its own: it reads our AuthnRequests and answers with
real signed Responses (xmlsec1), and the helpers below tamper with them
the way the attacks of cases/saml.md do.

A Response is made by pysaml2, then its times, audience, recipient,
attributes and status are set to what the test asks, and only then is it
signed, so every variation carries a valid signature unless an attack
helper breaks it afterwards.
"""

from __future__ import annotations

import base64
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.sigver import RSACrypto, pre_signature_part, verify_redirect_signature
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from connectors.saml import NS, inflate_request

with warnings.catch_warnings():
    # pysaml2's symmetric ciphers module touches a cipher mode cryptography
    # has deprecated; the tests never use it.
    warnings.simplefilter("ignore")
    from saml2.server import Server

for _prefix in ("samlp", "saml", "ds", "xenc", "xsi"):
    ET.register_namespace(_prefix, NS[_prefix])

ENTITY_ID = "https://idp.example.test/saml/metadata"
SSO_URL = "https://idp.example.test/saml/sso"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
AUTHN_FAILED = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"
PASSWORD_CLASS = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
_ASSERTION_NODE = f"{NS['saml']}:Assertion"
_RESPONSE_NODE = f"{NS['samlp']}:Response"


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_key_pair(folder: Path, name: str, *, bits: int = 2048) -> tuple[Path, Path]:
    """A throwaway RSA key and self-signed certificate, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test IdP {name}")])
    start = datetime.now(UTC) - timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / f"{name}.key", folder / f"{name}.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


class _Server(Server):  # type: ignore[misc]
    """pysaml2's IdP without SP metadata: it never encrypts."""

    def has_encrypt_cert_in_metadata(self, sp_entity_id: str) -> bool:
        return False


@dataclass(frozen=True)
class SeenRequest:
    """An AuthnRequest as the IdP received it."""

    id: str
    issuer: str
    acs_url: str | None
    destination: str | None
    relay_state: str | None
    sig_alg: str | None
    signature_valid: bool


class TestIdp:
    __test__ = False  # not a pytest class

    def __init__(
        self,
        folder: Path,
        *,
        name: str = "idp",
        entity_id: str = ENTITY_ID,
        sso_url: str = SSO_URL,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.entity_id = entity_id
        self.sso_url = sso_url
        self.key_file, self.cert_file = new_key_pair(folder, name)
        self.certificate_pem = self.cert_file.read_text()
        config = IdPConfig()
        config.load(
            {
                "entityid": entity_id,
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [(sso_url, BINDING_HTTP_REDIRECT)]
                        },
                        "policy": {"default": {"lifetime": {"minutes": 5}}},
                    }
                },
                "key_file": str(self.key_file),
                "cert_file": str(self.cert_file),
                "xmlsec_binary": "/usr/bin/xmlsec1",
            }
        )
        self.server = _Server(config=config)

    @property
    def certificate_body(self) -> str:
        return _body(self.certificate_pem)

    def metadata(
        self, *, binding: str = BINDING_HTTP_REDIRECT, also: Sequence[str] = ()
    ) -> str:
        """This IdP's metadata, as an admin would upload it; ``also``: more
        signing certificates (a rollover)."""
        keys = "".join(
            '<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data>'
            f"<ds:X509Certificate>{_body(pem)}</ds:X509Certificate>"
            "</ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
            for pem in (self.certificate_pem, *also)
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<md:EntityDescriptor xmlns:md="{NS["md"]}" xmlns:ds="{NS["ds"]}" '
            f'entityID="{self.entity_id}">'
            '<md:IDPSSODescriptor protocolSupportEnumeration="'
            f'{NS["samlp"]}" WantAuthnRequestsSigned="true">{keys}'
            f'<md:SingleSignOnService Binding="{binding}" Location="{self.sso_url}"/>'
            "</md:IDPSSODescriptor></md:EntityDescriptor>\n"
        )

    def read_request(self, url: str, sp_certificate: str) -> SeenRequest:
        """The AuthnRequest carried by our redirect URL, its signature
        checked with the SP certificate."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        request = ET.fromstring(inflate_request(query["SAMLRequest"]))
        try:
            valid = bool(
                verify_redirect_signature(
                    query, RSACrypto(None), cert=_body(sp_certificate)
                )
            )
        except Exception:  # noqa: BLE001 - any failure is "not valid"
            valid = False
        return SeenRequest(
            id=request.get("ID", ""),
            issuer=(request.findtext(_q("saml", "Issuer")) or "").strip(),
            acs_url=request.get("AssertionConsumerServiceURL"),
            destination=request.get("Destination"),
            relay_state=query.get("RelayState"),
            sig_alg=query.get("SigAlg"),
            signature_valid=valid,
        )

    def response_xml(
        self,
        *,
        now: datetime,
        audience: str | None,
        recipient: str,
        destination: str | None,
        in_response_to: str | None = None,
        name_id: str = "ann@example.com",
        name_id_format: str = NAMEID_FORMAT_EMAILADDRESS,
        attributes: Mapping[str, Sequence[str]] | None = None,
        issuer: str | None = None,
        not_before: datetime | None = None,
        not_on_or_after: datetime | None = None,
        confirmation_not_on_or_after: datetime | None = None,
        status: str = SUCCESS,
        status_message: str | None = None,
        keep_assertion: bool | None = None,
        include_assertion: bool = True,
        sign_assertion: bool = True,
        sign_response: bool = False,
        sign_algorithm: str = SIG_RSA_SHA256,
    ) -> str:
        """A Response as the test asks, then signed. ``audience`` None: no
        AudienceRestriction; "": an empty Audience. ``destination`` None:
        no Destination attribute."""
        text = self.server.create_authn_response(
            {},
            in_response_to,
            recipient,
            audience or "unused",
            name_id=NameID(format=name_id_format, text="placeholder"),
            authn={"class_ref": PASSWORD_CLASS},
            sign_assertion=False,
            sign_response=False,
        )
        root = ET.fromstring(str(text))
        assertion = root.find(_q("saml", "Assertion"))
        assert assertion is not None
        not_before = not_before or now - timedelta(seconds=30)
        not_on_or_after = not_on_or_after or now + timedelta(minutes=5)
        _set(root, "IssueInstant", _stamp(now))
        _set(root, "InResponseTo", in_response_to)
        _set(root, "Destination", destination)
        _set(assertion, "IssueInstant", _stamp(now))
        for node in (root, assertion):
            found = node.find(_q("saml", "Issuer"))
            assert found is not None
            found.text = issuer or self.entity_id
        subject_name = assertion.find(f"{_q('saml', 'Subject')}/{_q('saml', 'NameID')}")
        assert subject_name is not None
        subject_name.text = name_id
        data = assertion.find(f".//{_q('saml', 'SubjectConfirmationData')}")
        assert data is not None
        _set(data, "Recipient", recipient)
        _set(data, "InResponseTo", in_response_to)
        _set(
            data,
            "NotOnOrAfter",
            _stamp(confirmation_not_on_or_after or not_on_or_after),
        )
        conditions = assertion.find(_q("saml", "Conditions"))
        assert conditions is not None
        _set(conditions, "NotBefore", _stamp(not_before))
        _set(conditions, "NotOnOrAfter", _stamp(not_on_or_after))
        for restriction in conditions.findall(_q("saml", "AudienceRestriction")):
            conditions.remove(restriction)
        if audience is not None:
            restriction = ET.SubElement(conditions, _q("saml", "AudienceRestriction"))
            ET.SubElement(restriction, _q("saml", "Audience")).text = audience
        authn = assertion.find(_q("saml", "AuthnStatement"))
        assert authn is not None
        _set(authn, "AuthnInstant", _stamp(now - timedelta(seconds=5)))
        for statement in assertion.findall(_q("saml", "AttributeStatement")):
            assertion.remove(statement)
        if attributes:
            statement = ET.SubElement(assertion, _q("saml", "AttributeStatement"))
            for attr_name, values in attributes.items():
                attribute = ET.SubElement(
                    statement, _q("saml", "Attribute"), {"Name": attr_name}
                )
                for value in values:
                    ET.SubElement(attribute, _q("saml", "AttributeValue")).text = value
        if status != SUCCESS:
            _set_status(root, status, status_message)
        if (status != SUCCESS and not keep_assertion) or not include_assertion:
            root.remove(assertion)
        if sign_assertion and assertion in list(root):
            assertion.insert(
                1, self._signature_template(assertion.get("ID", ""), sign_algorithm)
            )
        if sign_response:
            root.insert(1, self._signature_template(root.get("ID", ""), sign_algorithm))
        xml = ET.tostring(root, encoding="unicode")
        if sign_assertion and assertion in list(root):
            xml = self._sign(xml, _ASSERTION_NODE, assertion.get("ID", ""))
        if sign_response:
            xml = self._sign(xml, _RESPONSE_NODE, root.get("ID", ""))
        return xml

    def response(self, **options: object) -> str:
        """The same, base64-encoded as the HTTP-POST binding sends it."""
        return encode(self.response_xml(**options))  # type: ignore[arg-type]

    def _signature_template(self, element_id: str, algorithm: str) -> ET.Element:
        sha1 = algorithm.endswith("#rsa-sha1")
        template = pre_signature_part(
            element_id,
            public_key=self.certificate_body,
            sign_alg=algorithm,
            digest_alg="http://www.w3.org/2000/09/xmldsig#sha1"
            if sha1
            else DIGEST_SHA256,
        )
        return ET.fromstring(template.to_string())

    def _sign(self, xml: str, node: str, node_id: str) -> str:
        signed = self.server.sec.sign_statement(
            xml, node, key_file=str(self.key_file), node_id=node_id
        )
        return str(signed)


def _body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if "-----" not in line)


def _set(element: ET.Element, name: str, value: str | None) -> None:
    if value is None:
        element.attrib.pop(name, None)
    else:
        element.set(name, value)


def _set_status(root: ET.Element, status: str, message: str | None) -> None:
    node = root.find(_q("samlp", "Status"))
    assert node is not None
    code = node.find(_q("samlp", "StatusCode"))
    assert code is not None
    code.set("Value", RESPONDER)
    ET.SubElement(code, _q("samlp", "StatusCode"), {"Value": status})
    if message:
        ET.SubElement(node, _q("samlp", "StatusMessage")).text = message


def encode(xml: str | bytes) -> str:
    data = xml.encode() if isinstance(xml, str) else xml
    return base64.b64encode(data).decode()


# --- attacks on a signed Response (cases/saml.md) -----------------------------

_ASSERTION = re.compile(r"<saml:Assertion\b.*?</saml:Assertion>", re.DOTALL)
_SIGNATURE = re.compile(r"<ds:Signature\b.*?</ds:Signature>", re.DOTALL)


def assertion_of(xml: str) -> str:
    match = _ASSERTION.search(xml)
    assert match, "no assertion"
    return match.group(0)


def inject_comment(xml: str, name_id: str, at: int) -> str:
    """SAML-1: a comment inside the NameID, after ``at`` characters;
    canonicalization drops it, so the signature still holds."""
    head, tail = name_id[:at], name_id[at:]
    assert f">{name_id}<" in xml
    return xml.replace(f">{name_id}<", f">{head}<!---->{tail}<", 1)


def remove_signatures(xml: str) -> str:
    return _SIGNATURE.sub("", xml)


def forge(assertion: str, *, name_id: str, new_id: str = "id-forged") -> str:
    """An unsigned copy of ``assertion`` naming someone else."""
    forged = _SIGNATURE.sub("", assertion)
    forged = re.sub(r'ID="[^"]+"', f'ID="{new_id}"', forged, count=1)
    return re.sub(
        r"(<saml:NameID\b[^>]*>)[^<]*(</saml:NameID>)", rf"\g<1>{name_id}\g<2>", forged
    )


def wrap_in_extensions(xml: str, *, name_id: str) -> str:
    """SAML-2 (a): the signed assertion moved into the Response's
    Extensions, a forged unsigned one in its place."""
    signed = assertion_of(xml)
    swapped = xml.replace(signed, forge(signed, name_id=name_id))
    return _after_issuer(swapped, f"<samlp:Extensions>{signed}</samlp:Extensions>")


def wrap_in_forged(xml: str, *, name_id: str) -> str:
    """SAML-2 (a), another placement: the signed assertion hidden inside
    the forged one's Advice."""
    signed = assertion_of(xml)
    forged = forge(signed, name_id=name_id)
    forged = forged.replace(
        "</saml:Assertion>", f"<saml:Advice>{signed}</saml:Advice></saml:Assertion>"
    )
    return xml.replace(signed, forged)


def signature_moved_to_forged(xml: str, *, name_id: str) -> str:
    """SAML-2 (a), the classic: the forged assertion carries the original
    signature (which still refers to the original by ID), the original
    sits in Extensions without it."""
    signed = assertion_of(xml)
    signature = _SIGNATURE.search(signed)
    assert signature
    original = signed.replace(signature.group(0), "")
    forged = forge(signed, name_id=name_id)
    forged = re.sub(
        r"(</saml:Issuer>)", lambda m: m.group(1) + signature.group(0), forged, count=1
    )
    swapped = xml.replace(signed, forged)
    return _after_issuer(swapped, f"<samlp:Extensions>{original}</samlp:Extensions>")


def hide_in_signature(error_xml: str, assertion: str) -> str:
    """SAML-2 (b): a signed error Response carrying, inside its own
    signature (which the enveloped transform leaves unsigned), a signed
    assertion from another Response."""
    signature = _SIGNATURE.search(error_xml)
    assert signature
    grown = signature.group(0).replace(
        "</ds:Signature>", f"<ds:Object>{assertion}</ds:Object></ds:Signature>"
    )
    return error_xml.replace(signature.group(0), grown)


def two_assertions(xml: str, *, name_id: str) -> str:
    """SAML-2 (c): a second assertion beside the signed one."""
    signed = assertion_of(xml)
    return xml.replace(signed, signed + forge(signed, name_id=name_id))


def wrap_response(xml: str, *, name_id: str) -> str:
    """A signed Response pushed into the Extensions of a new unsigned one
    whose assertion is forged, the original signature moved to the top."""
    root_id = re.search(r'<samlp:Response\b[^>]*\bID="([^"]+)"', xml)
    assert root_id
    signed = assertion_of(xml)
    forged = forge(signed, name_id=name_id)
    outer = xml.replace(signed, forged).replace(root_id.group(1), "id-outer", 1)
    inner = re.sub(r"<\?xml[^>]*\?>\s*", "", xml)
    return _after_issuer(outer, f"<samlp:Extensions>{inner}</samlp:Extensions>")


def with_doctype(xml: str, *, system_url: str) -> str:
    """SAML-3: a DOCTYPE with an external entity, then the real Response."""
    body = re.sub(r"<\?xml[^>]*\?>\s*", "", xml)
    return (
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE samlp:Response [<!ENTITY ext SYSTEM "{system_url}">]>\n' + body
    )


def with_external_dtd(xml: str, *, system_url: str) -> str:
    body = re.sub(r"<\?xml[^>]*\?>\s*", "", xml)
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE samlp:Response SYSTEM "{system_url}">\n'
        + body
    )


def _after_issuer(xml: str, insert: str) -> str:
    """``insert`` placed right after the Response's own Issuer (and
    signature, if any), where Extensions go."""
    match = re.search(r"<samlp:Status\b", xml)
    assert match
    return xml[: match.start()] + insert + xml[match.start() :]


# --- a loopback web server ------------------------------------------------------


class Served:
    """A web server on loopback answering every GET with ``body`` and
    counting what it was asked: the metadata URL an admin gives, or the
    external entity an attacker names (which must never be fetched)."""

    def __init__(self, body: bytes = b"", content_type: str = "application/xml"):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.body = body
        self.paths: list[str] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                served.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
