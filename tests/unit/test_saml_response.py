"""The Response checks of connectors.saml (SAML-1 to SAML-5), against real
Responses signed by the test IdP (tests/saml_idp.py) and a real Okta one.
Service-level refusals, audit and replay: tests/integration/test_sso_saml.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors import saml
from connectors.saml import SamlError, verify_response
from tests import saml_idp
from tests.saml_idp import AUTHN_FAILED, Served, TestIdp, encode

DATA = Path(__file__).parent.parent / "data" / "saml"
SP = "https://portcullis.example/sso/saml/acme/metadata"
ACS = "https://portcullis.example/sso/saml/acme/acs"
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
SKEW = 120


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    return TestIdp(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def successor(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    """The same IdP signing with its next key (a rollover)."""
    return TestIdp(tmp_path_factory.mktemp("idp-next"), name="next")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TestIdp:
    """Someone else's key, under the same entity id."""
    return TestIdp(tmp_path_factory.mktemp("idp-other"), name="other")


def make(idp: TestIdp, **options: Any) -> str:
    values: dict[str, Any] = {
        "now": NOW,
        "audience": SP,
        "recipient": ACS,
        "destination": ACS,
        "in_response_to": "id-request",
        "name_id": "user@example.com",
    }
    values.update(options)
    return idp.response_xml(**values)


def check(xml: str, idp: TestIdp, **options: Any) -> saml.SamlAssertion:
    values: dict[str, Any] = {
        "idp_entity_id": idp.entity_id,
        "idp_certificates": [idp.certificate_pem],
        "sp_entity_id": SP,
        "acs_url": ACS,
        "now": NOW,
        "skew_seconds": SKEW,
    }
    values.update(options)
    return verify_response(encode(xml), **values)


def refused(xml: str, idp: TestIdp, **options: Any) -> SamlError:
    with pytest.raises(SamlError) as caught:
        check(xml, idp, **options)
    return caught.value


# --- accepted -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sign_assertion", "sign_response"),
    [(True, False), (False, True), (True, True)],
    ids=["assertion-signed", "response-signed", "both-signed"],
)
def test_a_signed_answer_is_read(
    idp: TestIdp, sign_assertion: bool, sign_response: bool
) -> None:
    xml = make(
        idp,
        name_id="ann@example.com",
        attributes={"email": ["ann@example.com"], "groups": ["staff", "admins"]},
        sign_assertion=sign_assertion,
        sign_response=sign_response,
    )
    assertion = check(xml, idp)
    assert assertion.name_id == "ann@example.com"
    assert assertion.issuer == idp.entity_id
    assert assertion.in_response_to == "id-request"
    assert assertion.attributes == {
        "email": ["ann@example.com"],
        "groups": ["staff", "admins"],
    }
    assert assertion.not_on_or_after == NOW + timedelta(minutes=5)
    assert (assertion.assertion_signed, assertion.response_signed) == (
        sign_assertion,
        sign_response,
    )


def test_the_okta_response_decrypts_with_our_key() -> None:
    xml = (DATA / "okta_response_signed_encrypted_assertion.xml").read_text()
    assertion = verify_response(
        encode(xml),
        idp_entity_id="http://www.okta.com/exkppsa1qwuFV4D7z0h7",
        idp_certificates=[(DATA / "certs" / "okta_idp_signing_cert.pem").read_text()],
        sp_entity_id="http://localhost:8000/saml/metadata",
        acs_url="http://localhost:8000/saml/acs",
        now=datetime(2020, 3, 3, 19, 24, 28, tzinfo=UTC),
        skew_seconds=SKEW,
        decryption_keys=[DATA / "okta_response_sp_decryption_key.pem"],
    )
    assert assertion.encrypted and assertion.response_signed
    assert assertion.name_id == "testuser@testrsc.com"
    assert assertion.in_response_to == "id-a7364d1e4432aa9085a7a8bd824ea2fa8fa8f684"
    assert assertion.attributes == {"Username": ["FixedValue"]}
    assert saml.map_attributes(assertion).email == "testuser@testrsc.com"


@pytest.mark.parametrize(
    ("keys", "code"),
    [([], "saml_encrypted"), (["wrong"], "saml_decrypt_failed")],
    ids=["no-key", "wrong-key"],
)
def test_an_assertion_we_cannot_decrypt_is_refused(
    idp: TestIdp, keys: list[str], code: str
) -> None:
    xml = (DATA / "okta_response_signed_encrypted_assertion.xml").read_text()
    with pytest.raises(SamlError) as caught:
        verify_response(
            encode(xml),
            idp_entity_id="http://www.okta.com/exkppsa1qwuFV4D7z0h7",
            idp_certificates=[
                (DATA / "certs" / "okta_idp_signing_cert.pem").read_text()
            ],
            sp_entity_id="http://localhost:8000/saml/metadata",
            acs_url="http://localhost:8000/saml/acs",
            now=datetime(2020, 3, 3, 19, 24, 28, tzinfo=UTC),
            skew_seconds=SKEW,
            decryption_keys=[idp.key_file for _ in keys],
        )
    assert caught.value.code == code


def test_the_okta_response_edited_after_signing_is_refused() -> None:
    xml = (DATA / "okta_response_signed_encrypted_assertion.xml").read_text()
    edited = xml.replace(
        'Destination="http://localhost:8000/saml/acs"',
        'Destination="http://localhost:8000/saml/acs2"',
    )
    with pytest.raises(SamlError) as caught:
        verify_response(
            encode(edited),
            idp_entity_id="http://www.okta.com/exkppsa1qwuFV4D7z0h7",
            idp_certificates=[
                (DATA / "certs" / "okta_idp_signing_cert.pem").read_text()
            ],
            sp_entity_id="http://localhost:8000/saml/metadata",
            acs_url="http://localhost:8000/saml/acs2",
            now=datetime(2020, 3, 3, 19, 24, 28, tzinfo=UTC),
            skew_seconds=SKEW,
            decryption_keys=[DATA / "okta_response_sp_decryption_key.pem"],
        )
    assert caught.value.code == "saml_signature_invalid"


# --- SAML-1: comments in the NameID ---------------------------------------------


@pytest.mark.parametrize(
    "at", [17, 5, 29], ids=["after-domain", "in-local-part", "before-tld"]
)
def test_a_comment_in_the_name_id_does_not_shorten_it(idp: TestIdp, at: int) -> None:
    real = "admin@example.com.evil.example"
    xml = saml_idp.inject_comment(make(idp, name_id=real), real, at)
    assert "<!---->" in xml
    assertion = check(xml, idp)
    assert assertion.name_id == real
    assert saml.map_attributes(assertion).email == real


def test_a_comment_in_an_attribute_does_not_shorten_it(idp: TestIdp) -> None:
    real = "admin@example.com.evil.example"
    xml = make(idp, attributes={"email": [real]}, name_id="opaque-subject-1")
    xml = xml.replace(f">{real}<", ">admin@example.com<!-- -->.evil.example<")
    assert saml.map_attributes(check(xml, idp)).email == real


# --- SAML-2: wrapping, unsigned, several assertions ---------------------------------


def _extensions(xml: str) -> str:
    return saml_idp.wrap_in_extensions(xml, name_id="admin@example.com")


def _advice(xml: str) -> str:
    return saml_idp.wrap_in_forged(xml, name_id="admin@example.com")


def _moved_signature(xml: str) -> str:
    return saml_idp.signature_moved_to_forged(xml, name_id="admin@example.com")


def _two(xml: str) -> str:
    return saml_idp.two_assertions(xml, name_id="admin@example.com")


def _nested_response(xml: str) -> str:
    return saml_idp.wrap_response(xml, name_id="admin@example.com")


def _reference_elsewhere(xml: str) -> str:
    return re.sub(r'URI="#[^"]+"', 'URI="#id-elsewhere"', xml, count=1)


def _second_signature(xml: str) -> str:
    signature = re.search(r"<ds:Signature\b.*?</ds:Signature>", xml, re.DOTALL)
    assert signature
    return xml.replace(signature.group(0), signature.group(0) * 2, 1)


def _signature_in_issuer(xml: str) -> str:
    signature = re.search(r"<ds:Signature\b.*?</ds:Signature>", xml, re.DOTALL)
    assert signature
    return re.sub(
        r"(<saml:Issuer\b[^>]*>)",
        lambda m: m.group(1) + signature.group(0),
        xml,
        count=1,
    )


def _duplicate_id(xml: str) -> str:
    assertion_id = re.search(r'<saml:Assertion\b[^>]*\bID="([^"]+)"', xml)
    assert assertion_id
    return xml.replace(
        "<samlp:Status>",
        f'<samlp:Extensions><x ID="{assertion_id.group(1)}"/></samlp:Extensions><samlp:Status>',
        1,
    )


def _moved_out_of_response(xml: str) -> str:
    signed = saml_idp.assertion_of(xml)
    inner = xml.replace(signed, "")
    return inner.replace(
        "<samlp:Status>",
        f"<samlp:Extensions>{signed}</samlp:Extensions><samlp:Status>",
        1,
    )


WRAPPING: list[tuple[str, Callable[[str], str], dict[str, bool], str]] = [
    ("a-signed-one-in-extensions", _extensions, {}, "saml_assertion_count"),
    ("a-signed-one-in-forged-advice", _advice, {}, "saml_assertion_count"),
    ("a-signature-moved-to-forged", _moved_signature, {}, "saml_assertion_count"),
    ("c-two-assertions", _two, {}, "saml_assertion_count"),
    (
        "c-two-assertions-response-signed",
        _two,
        {"sign_response": True},
        "saml_assertion_count",
    ),
    (
        "signed-response-nested",
        _nested_response,
        {"sign_response": True, "sign_assertion": False},
        "saml_wrapping",
    ),
    ("reference-to-another-element", _reference_elsewhere, {}, "saml_wrapping"),
    ("two-signatures-on-one-element", _second_signature, {}, "saml_wrapping"),
    (
        "signature-hidden-in-issuer",
        _signature_in_issuer,
        {"sign_response": True},
        "saml_wrapping",
    ),
    ("duplicate-id", _duplicate_id, {}, "saml_wrapping"),
    ("only-assertion-out-of-place", _moved_out_of_response, {}, "saml_wrapping"),
]


@pytest.mark.parametrize(
    ("attack", "signing", "code"),
    [pytest.param(a, s, c, id=i) for i, a, s, c in WRAPPING],
)
def test_wrapping_is_refused(
    idp: TestIdp, attack: Callable[[str], str], signing: dict[str, bool], code: str
) -> None:
    xml = attack(make(idp, name_id="user@example.com", **signing))
    assert refused(xml, idp).code == code


def test_b_an_error_response_carrying_a_signed_assertion_is_refused(
    idp: TestIdp,
) -> None:
    error = make(idp, status=AUTHN_FAILED, sign_response=True, sign_assertion=False)
    xml = saml_idp.hide_in_signature(error, saml_idp.assertion_of(make(idp)))
    assert check_code(xml, idp) == "saml_status"


def test_b_a_success_response_carrying_an_assertion_in_its_signature_is_refused(
    idp: TestIdp,
) -> None:
    empty = make(idp, sign_response=True, sign_assertion=False, include_assertion=False)
    xml = saml_idp.hide_in_signature(empty, saml_idp.assertion_of(make(idp)))
    assert check_code(xml, idp) == "saml_wrapping"


def check_code(xml: str, idp: TestIdp) -> str:
    return refused(xml, idp).code


@pytest.mark.parametrize(
    ("xml_of", "code"),
    [
        (lambda idp: make(idp, sign_assertion=False), "saml_unsigned"),
        (lambda idp: saml_idp.remove_signatures(make(idp)), "saml_unsigned"),
        (
            lambda idp: saml_idp.remove_signatures(make(idp, sign_response=True)),
            "saml_unsigned",
        ),
        (
            lambda idp: make(idp).replace("user@example.com", "admin@example.com"),
            "saml_signature_invalid",
        ),
        (
            lambda idp: make(idp, sign_response=True, sign_assertion=False).replace(
                "user@example.com", "admin@example.com"
            ),
            "saml_signature_invalid",
        ),
    ],
    ids=[
        "never-signed",
        "signature-removed",
        "both-signatures-removed",
        "edited-after-signing",
        "edited-response-signed",
    ],
)
def test_an_unsigned_or_edited_assertion_is_refused(
    idp: TestIdp, xml_of: Callable[[TestIdp], str], code: str
) -> None:
    assert refused(xml_of(idp), idp).code == code


def test_a_response_with_no_assertion_is_refused(idp: TestIdp) -> None:
    xml = make(idp, include_assertion=False, sign_response=True, sign_assertion=False)
    assert refused(xml, idp).code == "saml_assertion_count"


def test_sha1_signatures_are_refused(idp: TestIdp) -> None:
    xml = make(idp, sign_algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1")
    assert refused(xml, idp).code == "saml_signature_algorithm"


def test_the_simplesamlphp_shape_is_refused_cleanly(idp: TestIdp) -> None:
    xml = (DATA / "simplesamlphp_response_structure_only.xml").read_text()
    error = refused(
        xml,
        idp,
        idp_entity_id="https://federate.example.net/saml/saml2/idp/metadata.php",
        sp_entity_id="hello.com",
        acs_url="https://example.hello.com/access/saml",
        now=datetime(2011, 6, 17, 14, 55, tzinfo=UTC),
    )
    assert error.status == 403
    assert error.code == "saml_signature_algorithm"


def test_the_simplesamlphp_shape_with_sha256_named_still_does_not_verify(
    idp: TestIdp,
) -> None:
    xml = (DATA / "simplesamlphp_response_structure_only.xml").read_text()
    xml = xml.replace(
        "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    ).replace(
        "http://www.w3.org/2000/09/xmldsig#sha1",
        "http://www.w3.org/2001/04/xmlenc#sha256",
    )
    error = refused(
        xml,
        idp,
        idp_entity_id="https://federate.example.net/saml/saml2/idp/metadata.php",
        now=datetime(2011, 6, 17, 14, 55, tzinfo=UTC),
    )
    assert error.code == "saml_signature_invalid"


# --- certificates: rollover, strangers --------------------------------------------


def test_either_of_two_configured_certificates_verifies(
    idp: TestIdp, successor: TestIdp
) -> None:
    both = [idp.certificate_pem, successor.certificate_pem]
    for signer in (idp, successor):
        assert check(make(signer), idp, idp_certificates=both).name_id


def test_a_third_key_is_refused_even_with_its_certificate_in_key_info(
    idp: TestIdp, successor: TestIdp, stranger: TestIdp
) -> None:
    both = [idp.certificate_pem, successor.certificate_pem]
    xml = make(stranger, sign_response=True)
    assert stranger.certificate_body in xml
    assert refused(xml, idp, idp_certificates=both).code == "saml_signature_invalid"


# --- status, issuer ---------------------------------------------------------------


def test_an_error_status_is_refused_with_the_idps_words(idp: TestIdp) -> None:
    xml = make(
        idp,
        status=AUTHN_FAILED,
        status_message="User not assigned",
        sign_response=True,
        sign_assertion=False,
    )
    error = refused(xml, idp)
    assert error.code == "saml_status"
    assert "AuthnFailed" in error.message
    assert error.details["message"] == "User not assigned"


def test_another_issuer_is_refused(idp: TestIdp) -> None:
    xml = make(idp, issuer="https://idp.other.example/metadata")
    assert refused(xml, idp).code == "saml_issuer"


# --- SAML-5: audience, recipient, destination ------------------------------------------


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"audience": "https://other.example/metadata"}, "saml_audience"),
        ({"audience": ""}, "saml_audience"),
        ({"audience": None}, "saml_audience"),
        (
            {"recipient": "https://other.example/acs", "destination": ACS},
            "saml_recipient",
        ),
        ({"destination": "https://other.example/acs"}, "saml_destination"),
        ({"destination": None, "sign_response": True}, "saml_destination"),
    ],
    ids=[
        "another-audience",
        "empty-audience",
        "no-audience-restriction",
        "another-recipient",
        "another-destination",
        "signed-response-without-destination",
    ],
)
def test_an_assertion_for_someone_else_is_refused(
    idp: TestIdp, options: dict[str, Any], code: str
) -> None:
    assert refused(make(idp, **options), idp).code == code


def test_an_unsigned_response_may_leave_destination_out(idp: TestIdp) -> None:
    assert check(make(idp, destination=None), idp).name_id


# --- times ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "code"),
    [
        (NOW + timedelta(minutes=5) + timedelta(seconds=SKEW - 1), None),
        (NOW + timedelta(minutes=5) + timedelta(seconds=SKEW), "saml_expired"),
        (NOW + timedelta(hours=1), "saml_expired"),
        (NOW - timedelta(seconds=30 + SKEW), None),
        (NOW - timedelta(seconds=30 + SKEW + 1), "saml_not_yet_valid"),
        (NOW - timedelta(hours=1), "saml_not_yet_valid"),
    ],
    ids=[
        "end-within-skew",
        "end-at-skew",
        "expired",
        "start-within-skew",
        "start-beyond-skew",
        "not-yet-valid",
    ],
)
def test_validity_window_with_skew(
    idp: TestIdp, moment: datetime, code: str | None
) -> None:
    xml = make(idp)
    if code is None:
        assert check(xml, idp, now=moment).name_id
    else:
        assert refused(xml, idp, now=moment).code == code


def test_the_earliest_end_counts(idp: TestIdp) -> None:
    shorter = make(idp, confirmation_not_on_or_after=NOW + timedelta(minutes=1))
    assert check(shorter, idp).not_on_or_after == NOW + timedelta(minutes=1)
    later = NOW + timedelta(minutes=1, seconds=SKEW)
    assert refused(shorter, idp, now=later).code == "saml_expired"


# --- InResponseTo ------------------------------------------------------------------------


def test_an_unsolicited_answer_has_no_request(idp: TestIdp) -> None:
    assert check(make(idp, in_response_to=None), idp).in_response_to is None


def test_an_unsigned_response_cannot_make_an_unsolicited_assertion_solicited(
    idp: TestIdp,
) -> None:
    xml = make(idp, in_response_to=None).replace(
        "<samlp:Response ", '<samlp:Response InResponseTo="id-victims-request" ', 1
    )
    assert check(xml, idp).in_response_to is None


def test_an_unsigned_response_cannot_move_an_assertion_to_another_request(
    idp: TestIdp,
) -> None:
    xml = make(idp).replace(
        'InResponseTo="id-request"', 'InResponseTo="id-attackers-request"', 1
    )
    assert refused(xml, idp).code == "saml_in_response_to"


def test_the_expected_request_is_enforced_when_given(idp: TestIdp) -> None:
    xml = make(idp)
    assert check(xml, idp, expected_in_response_to="id-request").name_id
    assert (
        refused(xml, idp, expected_in_response_to="id-other").code
        == "saml_in_response_to"
    )


# --- SAML-3: DOCTYPE and malformed input -------------------------------------------------


def test_a_doctype_with_an_external_entity_is_refused_before_anything_is_fetched(
    idp: TestIdp,
) -> None:
    with Served(b"<!ENTITY x 'y'>") as server:
        for attack in (saml_idp.with_doctype, saml_idp.with_external_dtd):
            xml = attack(make(idp), system_url=f"{server.url}/evil.dtd")
            error = refused(xml, idp)
            assert (error.code, error.status) == ("saml_doctype", 400)
        assert server.paths == []


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        encode("<not-closed>"),
        encode("<samlp:Response/>"),
        "",
        "A" * 800_000,
    ],
    ids=["not-base64", "not-xml", "not-a-response", "empty", "too-large"],
)
def test_malformed_input_is_a_400(idp: TestIdp, value: str) -> None:
    with pytest.raises(SamlError) as caught:
        verify_response(
            value,
            idp_entity_id=idp.entity_id,
            idp_certificates=[idp.certificate_pem],
            sp_entity_id=SP,
            acs_url=ACS,
            now=NOW,
            skew_seconds=SKEW,
        )
    assert (caught.value.code, caught.value.status) == ("saml_malformed", 400)


def test_no_configured_certificate_refuses_everything(idp: TestIdp) -> None:
    assert refused(make(idp), idp, idp_certificates=[]).code == "saml_not_configured"


def test_a_transient_answer_keeps_its_name_id_format(idp: TestIdp) -> None:
    xml = make(
        idp,
        name_id="_a1b2c3",
        name_id_format="urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
    )
    assert check(xml, idp).name_id_format.endswith(":transient")  # type: ignore[union-attr]
