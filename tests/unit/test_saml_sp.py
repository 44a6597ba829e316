"""What we publish and send as a service provider: our metadata, and the
signed AuthnRequest the test IdP reads back from our redirect URL."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from connectors.saml import (
    authn_request_url,
    inflate_request,
    normalize_certificate,
    parse_xml,
    sp_metadata,
)
from tests.saml_idp import TestIdp, new_key_pair

SP = "https://portcullis.example/sso/saml/acme/metadata"
ACS = "https://portcullis.example/sso/saml/acme/acs"
MD = "{urn:oasis:names:tc:SAML:2.0:metadata}"
DS = "{http://www.w3.org/2000/09/xmldsig#}"
SAMLP = "{urn:oasis:names:tc:SAML:2.0:protocol}"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"


@pytest.fixture(scope="module")
def our_keys(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Our SP key pairs, newest first."""
    folder = tmp_path_factory.mktemp("sp")
    return [new_key_pair(folder, "newest", bits=3072), new_key_pair(folder, "older")]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    return TestIdp(tmp_path_factory.mktemp("idp"))


def test_our_metadata_describes_a_signing_sp(our_keys: list[tuple[Path, Path]]) -> None:
    certificates = [cert.read_text() for _key, cert in our_keys]
    xml = sp_metadata(entity_id=SP, acs_url=ACS, certificates=certificates)
    root = parse_xml(xml.encode())
    assert root.tag == f"{MD}EntityDescriptor"
    assert root.get("entityID") == SP
    descriptor = root.find(f"{MD}SPSSODescriptor")
    assert descriptor is not None
    assert descriptor.get("AuthnRequestsSigned") == "true"
    assert descriptor.get("WantAssertionsSigned") == "true"
    assert "urn:oasis:names:tc:SAML:2.0:protocol" in descriptor.get(
        "protocolSupportEnumeration", ""
    )
    services = descriptor.findall(f"{MD}AssertionConsumerService")
    assert [(s.get("Binding"), s.get("Location")) for s in services] == [(POST, ACS)]
    published: dict[str, list[str]] = {}
    for key in descriptor.findall(f"{MD}KeyDescriptor"):
        text = key.findtext(f".//{DS}X509Certificate") or ""
        published.setdefault(key.get("use", ""), []).append(normalize_certificate(text))
    expected = [normalize_certificate(c) for c in certificates]
    assert published == {"signing": expected, "encryption": expected}


def test_the_authn_request_is_signed_deflated_and_answers_to_our_acs(
    our_keys: list[tuple[Path, Path]], idp: TestIdp
) -> None:
    key_file, cert_file = our_keys[0]
    url = authn_request_url(
        sso_url=idp.sso_url,
        request_id="id-0123abcd",
        sp_entity_id=SP,
        acs_url=ACS,
        issue_instant=datetime(2030, 1, 1, 12, tzinfo=UTC),
        relay_state="id-0123abcd",
        key_pem=key_file.read_bytes(),
    )
    assert url.startswith(idp.sso_url + "?SAMLRequest=")
    seen = idp.read_request(url, cert_file.read_text())
    assert seen.signature_valid
    assert seen.sig_alg == RSA_SHA256
    assert (seen.id, seen.issuer, seen.acs_url) == ("id-0123abcd", SP, ACS)
    assert seen.destination == idp.sso_url
    assert seen.relay_state == "id-0123abcd"
    request = ET.fromstring(
        inflate_request(parse_qs(urlsplit(url).query)["SAMLRequest"][0])
    )
    assert request.get("ProtocolBinding") == POST
    assert request.get("IssueInstant") == "2030-01-01T12:00:00Z"
    assert request.find(f"{SAMLP}NameIDPolicy") is not None


def test_a_request_signed_by_another_key_does_not_verify(
    our_keys: list[tuple[Path, Path]], idp: TestIdp
) -> None:
    (key_file, _cert), (_key, other_cert) = our_keys
    url = authn_request_url(
        sso_url=idp.sso_url,
        request_id="id-1",
        sp_entity_id=SP,
        acs_url=ACS,
        issue_instant=datetime(2030, 1, 1, tzinfo=UTC),
        relay_state="id-1",
        key_pem=key_file.read_bytes(),
    )
    assert not idp.read_request(url, other_cert.read_text()).signature_valid


def test_an_sso_url_with_a_query_keeps_it(our_keys: list[tuple[Path, Path]]) -> None:
    key_file, _cert = our_keys[0]
    url = authn_request_url(
        sso_url="https://accounts.google.com/o/saml2/idp?idpid=C00000000",
        request_id="id-1",
        sp_entity_id=SP,
        acs_url=ACS,
        issue_instant=datetime(2030, 1, 1, tzinfo=UTC),
        relay_state="id-1",
        key_pem=key_file.read_bytes(),
    )
    query = parse_qs(urlsplit(url).query)
    assert query["idpid"] == ["C00000000"]
    assert set(query) == {"idpid", "SAMLRequest", "RelayState", "SigAlg", "Signature"}
