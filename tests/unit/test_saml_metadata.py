"""Reading an IdP's metadata (connectors.saml.parse_idp_metadata): every
sample of tests/data/saml, the Google one past its validUntil, and the
shapes that must be refused with a reason an admin can act on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.saml import (
    SamlError,
    certificate_fingerprint,
    normalize_certificate,
    parse_idp_metadata,
)
from tests.saml_idp import Served

DATA = Path(__file__).parent.parent / "data" / "saml"
# Before the Okta certificate expires (2028), after Google's validUntil.
NOW = datetime(2025, 1, 1, tzinfo=UTC)
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
OKTA_CERT = (DATA / "certs" / "okta_idp_signing_cert.pem").read_text()


def body_of(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if "-----" not in line)


SAMPLES = [
    (
        "okta_idp_metadata.xml",
        "http://www.okta.com/exkppsa1qwuFV4D7z0h7",
        (
            "https://dev-000000.oktapreview.com/app/examplecodev000000_dev_1/"
            "exkppsa1qwuFV4D7z0h7/sso/saml"
        ),
    ),
    (
        "google_workspace_idp_metadata.xml",
        "https://accounts.google.com/o/saml2?idpid=C00000000",
        "https://accounts.google.com/o/saml2/idp?idpid=C00000000",
    ),
    (
        "adfs_federation_metadata.xml",
        "http://idp.adfs.example.com/adfs/services/trust",
        "https://idp.adfs.example.com/adfs/ls/",
    ),
    (
        "shibboleth_idp_metadata_testshib.xml",
        "https://idp.testshib.org/idp/shibboleth",
        "https://idp.testshib.org/idp/profile/SAML2/Redirect/SSO",
    ),
]


@pytest.mark.parametrize(
    ("name", "entity_id", "sso_url"),
    SAMPLES,
    ids=[s[0].split("_")[0] for s in SAMPLES],
)
def test_each_sample_is_read(name: str, entity_id: str, sso_url: str) -> None:
    metadata = parse_idp_metadata((DATA / name).read_bytes(), NOW)
    assert metadata.entity_id == entity_id
    assert metadata.sso_url == sso_url
    assert len(metadata.certificates) == 1
    pem = metadata.certificates[0]
    assert pem.startswith("-----BEGIN CERTIFICATE-----\n")
    assert all(len(line) <= 64 for line in pem.splitlines())
    # The certificate is the one the file holds, whatever its wrapping.
    raw = (DATA / name).read_text()
    assert body_of(pem)[:40] in "".join(raw.split())


def test_the_okta_certificate_wrapped_with_spaces_is_the_extracted_one() -> None:
    metadata = parse_idp_metadata((DATA / "okta_idp_metadata.xml").read_text(), NOW)
    assert metadata.certificates == [normalize_certificate(OKTA_CERT)]
    assert metadata.warnings == []


def test_google_metadata_past_its_valid_until_is_imported_with_warnings() -> None:
    metadata = parse_idp_metadata(
        (DATA / "google_workspace_idp_metadata.xml").read_bytes(), NOW
    )
    assert metadata.valid_until == datetime(2021, 1, 3, 16, 17, 49, tzinfo=UTC)
    text = " ".join(metadata.warnings)
    assert "valid until 2021-01-03" in text
    assert "HTTP-POST" in text
    assert "expired on 2021-01-03" in text


def test_adfs_metadata_warns_of_its_short_key() -> None:
    metadata = parse_idp_metadata(
        (DATA / "adfs_federation_metadata.xml").read_bytes(), NOW
    )
    assert any("1024-bit" in w for w in metadata.warnings)


def test_shibboleth_picks_the_saml2_redirect_endpoint_over_saml1() -> None:
    metadata = parse_idp_metadata(
        (DATA / "shibboleth_idp_metadata_testshib.xml").read_bytes(), NOW
    )
    assert "/SAML2/Redirect/" in metadata.sso_url
    assert "Shibboleth/SSO" not in metadata.sso_url


def entity(
    entity_id: str,
    *,
    idp: bool = True,
    bindings: tuple[str, ...] = (REDIRECT,),
    certificates: tuple[str, ...] = (OKTA_CERT,),
    use: str | None = "signing",
    valid_until: str | None = None,
    protocol: str = "urn:oasis:names:tc:SAML:2.0:protocol",
) -> str:
    use_attr = f' use="{use}"' if use else ""
    keys = "".join(
        f"<md:KeyDescriptor{use_attr}><ds:KeyInfo><ds:X509Data><ds:X509Certificate>"
        f"{body_of(pem)}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>"
        "</md:KeyDescriptor>"
        for pem in certificates
    )
    services = "".join(
        f'<md:SingleSignOnService Binding="{b}" Location="https://idp.example/{i}"/>'
        for i, b in enumerate(bindings)
    )
    role = "IDPSSODescriptor" if idp else "SPSSODescriptor"
    until = f' validUntil="{valid_until}"' if valid_until else ""
    return (
        f'<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="{DS}" entityID="{entity_id}"{until}>'
        f'<md:{role} protocolSupportEnumeration="{protocol}">{keys}{services}</md:{role}>'
        "</md:EntityDescriptor>"
    )


def test_an_aggregate_with_one_idp_yields_it() -> None:
    xml = (
        f'<md:EntitiesDescriptor xmlns:md="{MD}">'
        + entity("https://sp.example", idp=False)
        + entity("https://idp.example")
        + "</md:EntitiesDescriptor>"
    )
    assert parse_idp_metadata(xml, NOW).entity_id == "https://idp.example"


def test_an_aggregate_with_two_idps_is_refused_naming_them() -> None:
    xml = (
        f'<md:EntitiesDescriptor xmlns:md="{MD}">'
        + entity("https://one.example")
        + entity("https://two.example")
        + "</md:EntitiesDescriptor>"
    )
    with pytest.raises(SamlError) as caught:
        parse_idp_metadata(xml, NOW)
    assert "https://one.example" in str(caught.value)
    assert "https://two.example" in str(caught.value)


def test_redirect_is_preferred_to_post() -> None:
    metadata = parse_idp_metadata(
        entity("https://idp.example", bindings=(POST, REDIRECT)), NOW
    )
    assert metadata.sso_url == "https://idp.example/1"
    assert metadata.warnings == []


def test_encryption_only_keys_are_not_signing_keys() -> None:
    with pytest.raises(SamlError, match="no signing certificate"):
        parse_idp_metadata(entity("https://idp.example", use="encryption"), NOW)
    # No use attribute: the key serves both.
    assert parse_idp_metadata(entity("https://idp.example", use=None), NOW).certificates


def test_a_certificate_listed_twice_is_kept_once() -> None:
    xml = entity("https://idp.example", certificates=(OKTA_CERT, OKTA_CERT))
    assert len(parse_idp_metadata(xml, NOW).certificates) == 1


def test_a_valid_until_in_the_future_is_kept_without_warning() -> None:
    xml = entity("https://idp.example", valid_until="2031-01-01T00:00:00Z")
    metadata = parse_idp_metadata(xml, NOW)
    assert metadata.valid_until == datetime(2031, 1, 1, tzinfo=UTC)
    assert metadata.warnings == []


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (entity("https://sp.example", idp=False), "no identity provider"),
        (entity("https://idp.example", bindings=()), "no SAML 2.0 sign-in address"),
        (
            entity(
                "https://idp.example",
                bindings=("urn:mace:shibboleth:1.0:profiles:AuthnRequest",),
            ),
            "no SAML 2.0 sign-in address",
        ),
        (
            entity(
                "https://idp.example", protocol="urn:oasis:names:tc:SAML:1.1:protocol"
            ),
            "does not speak SAML 2.0",
        ),
        (entity(""), "no valid entityID"),
        (entity("https://idp.example", certificates=()), "no signing certificate"),
        ("<html><body>Sign in</body></html>", "not SAML 2.0 metadata"),
        ("<md:EntityDescriptor", "not well-formed"),
    ],
    ids=[
        "sp-only",
        "no-sso",
        "saml1-only",
        "saml1-protocol",
        "no-entity-id",
        "no-certificate",
        "html",
        "broken",
    ],
)
def test_unusable_metadata_is_refused(xml: str, message: str) -> None:
    with pytest.raises(SamlError, match=message):
        parse_idp_metadata(xml, NOW)


def test_metadata_with_a_doctype_is_refused_and_nothing_is_fetched() -> None:
    with Served(b"<!ENTITY x 'y'>") as server:
        xml = (
            f'<!DOCTYPE md:EntityDescriptor [<!ENTITY % ext SYSTEM "{server.url}/x.dtd"> %ext;]>'
            + entity("https://idp.example")
        )
        with pytest.raises(SamlError) as caught:
            parse_idp_metadata(xml, NOW)
        assert caught.value.code == "saml_doctype"
        billion = (
            '<!DOCTYPE lol [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            + entity("https://idp.example&lol2;")
        )
        with pytest.raises(SamlError) as caught:
            parse_idp_metadata(billion, NOW)
        assert caught.value.code == "saml_doctype"
    assert server.paths == []


@pytest.mark.parametrize(
    "text",
    [
        OKTA_CERT,
        body_of(OKTA_CERT),
        " ".join(body_of(OKTA_CERT)[i : i + 76] for i in range(0, 1400, 76)),
        "\r\n" + OKTA_CERT.replace("\n", "\r\n"),
    ],
    ids=["pem", "bare-base64", "space-wrapped", "crlf"],
)
def test_certificates_are_normalised(text: str) -> None:
    assert normalize_certificate(text) == normalize_certificate(OKTA_CERT)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
    ],
    ids=["empty", "words", "not-der"],
)
def test_a_bad_certificate_is_refused(text: str) -> None:
    with pytest.raises(SamlError) as caught:
        normalize_certificate(text)
    assert caught.value.code == "saml_certificate_invalid"


def test_fingerprints_read_like_idp_consoles() -> None:
    fingerprint = certificate_fingerprint(OKTA_CERT)
    assert len(fingerprint.split(":")) == 32
    assert fingerprint == fingerprint.upper()
