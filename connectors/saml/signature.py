"""The signatures and the encrypted assertion of a Response, through
xmlsec1 (pysaml2's backend): which signatures may exist and where, the
algorithms accepted, verification with the configured IdP certificates
only (keys from KeyInfo ignored), and decryption with our keys. What the
Response must say once they pass is in ``connectors.saml.response``."""

from __future__ import annotations

import binascii
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from xml.etree.ElementTree import Element

from saml2.sigver import CryptoBackendXmlSec1, XmlsecError

from connectors.saml.certificates import _der
from connectors.saml.xml import NS, XML_ID, SamlError, _Document, _q, _text

# What xmlsec1 is told the signed element is (--id-attr:ID <node>).
_RESPONSE_NODE = f"{NS['samlp']}:Response"
_ASSERTION_NODE = f"{NS['saml']}:Assertion"

# SHA-1 is refused for signatures and digests (every IdP we know of signs
# with SHA-256 by default); so are HMAC methods, which would make a public
# certificate a MAC key.
SIGNATURE_ALGORITHMS = frozenset(
    {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    }
)
DIGEST_ALGORITHMS = frozenset(
    {
        "http://www.w3.org/2001/04/xmlenc#sha256",
        "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "http://www.w3.org/2001/04/xmlenc#sha512",
    }
)
_CANONICALIZATIONS = frozenset(
    {
        "http://www.w3.org/2001/10/xml-exc-c14n#",
        "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
        "http://www.w3.org/2006/12/xml-c14n11",
        "http://www.w3.org/2006/12/xml-c14n11#WithComments",
    }
)
# Reference transforms: the enveloped signature and canonicalization only,
# never XPath or XSLT, which could leave part of the assertion unsigned.
_TRANSFORMS = _CANONICALIZATIONS | {
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
}

# --- xmlsec1 ----------------------------------------------------------------


class _XmlSec(CryptoBackendXmlSec1):  # type: ignore[misc]
    """pysaml2's xmlsec1 backend, asking xmlsec1 its version once rather
    than before every command, and decrypting with external references
    refused (the ciphertext may come from anyone holding our certificate)."""

    @functools.cached_property
    def version(self) -> str:  # type: ignore[override]
        return str(CryptoBackendXmlSec1.version.fget(self))  # type: ignore[attr-defined]

    def decrypt_document(self, data: bytes, key_file: str) -> bytes:
        with tempfile.NamedTemporaryFile(suffix=".xml") as source:
            source.write(data)
            source.flush()
            command = [
                self.xmlsec,
                "--decrypt",
                "--privkey-pem",
                key_file,
                "--id-attr:Id",
                f"{NS['xenc']}:EncryptedKey",
                "--enabled-retrieval-method-uris",
                "empty,same-doc",
                "--enabled-cipher-reference-uris",
                "empty,same-doc",
            ]
            _out, _err, output = self._run_xmlsec(command, [source.name])
        return bytes(output)


@functools.cache
def _xmlsec() -> _XmlSec:
    binary = shutil.which("xmlsec1")
    if not binary:
        raise RuntimeError("xmlsec1 is not installed (Debian: apt install xmlsec1)")
    return _XmlSec(binary)


@contextmanager
def _pem_files(pems: Sequence[str]) -> Iterator[list[str]]:
    with ExitStack() as stack:
        names = []
        for pem in pems:
            handle = stack.enter_context(
                tempfile.NamedTemporaryFile("w", suffix=".pem")
            )
            handle.write(pem)
            handle.flush()
            names.append(handle.name)
        yield names


def _signature_verifies(
    data: bytes, node: str, node_id: str, cert_files: list[str]
) -> bool:
    for cert_file in cert_files:
        try:
            if _xmlsec().validate_signature(data, cert_file, "pem", node, node_id):
                return True
        except XmlsecError:
            continue
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"xmlsec1 could not be run: {exc}") from exc
    return False


def _ordered(certificates: Sequence[str], response: Element) -> list[str]:
    """The configured certificates, the one the Response names in a KeyInfo
    first (only to spare xmlsec1 a failing try: KeyInfo is never trusted)."""
    named = set()
    for node in response.iter(_q("ds", "X509Certificate")):
        try:
            named.add(_der(_text(node)))
        except (binascii.Error, ValueError):
            continue
    return sorted(certificates, key=lambda pem: _der(pem) not in named)


def _check_unique_ids(document: _Document) -> None:
    # Two elements with one ID let a signature cover one and the reader
    # take the other.
    seen: set[str] = set()
    for element in document.root.iter():
        for name in ("ID", "Id", XML_ID):
            value = element.get(name)
            if value is None:
                continue
            if value in seen:
                raise SamlError("saml_wrapping", "Two elements share one ID.")
            seen.add(value)


def _own_signature(element: Element) -> Element | None:
    """The element's enveloped signature, placed where the schema puts it
    (after the Issuer, before everything else) and referring to the
    element itself."""
    children = list(element)
    signatures = [c for c in children if c.tag == _q("ds", "Signature")]
    if not signatures:
        return None
    if len(signatures) > 1:
        raise SamlError("saml_wrapping", "An element carries two signatures.")
    signature = signatures[0]
    position = 1 if children and children[0].tag == _q("saml", "Issuer") else 0
    if children.index(signature) != position:
        raise SamlError("saml_wrapping", "A signature is out of place.")
    element_id = element.get("ID")
    signed_info = signature.find(_q("ds", "SignedInfo"))
    references = (
        signed_info.findall(_q("ds", "Reference")) if signed_info is not None else []
    )
    if not element_id or len(references) != 1:
        raise SamlError("saml_wrapping", "A signature does not name what it signs.")
    reference = references[0]
    if reference.get("URI") != f"#{element_id}":
        raise SamlError(
            "saml_wrapping", "A signature covers something other than its element."
        )
    assert signed_info is not None
    _check_algorithms(signed_info, reference)
    return signature


def _algorithm(parent: Element | None, tag: str) -> str:
    node = parent.find(_q("ds", tag)) if parent is not None else None
    return (node.get("Algorithm") or "") if node is not None else ""


def _check_algorithms(signed_info: Element, reference: Element) -> None:
    method = _algorithm(signed_info, "SignatureMethod")
    digest = _algorithm(reference, "DigestMethod")
    canonical = _algorithm(signed_info, "CanonicalizationMethod")
    transforms = [t.get("Algorithm", "") for t in reference.iter(_q("ds", "Transform"))]
    if method not in SIGNATURE_ALGORITHMS or digest not in DIGEST_ALGORITHMS:
        raise SamlError(
            "saml_signature_algorithm",
            "The IdP signs with an algorithm that is refused (SHA-1 or weaker); "
            "set it to sign with RSA-SHA256.",
            details={"signature": method[-40:], "digest": digest[-40:]},
        )
    if canonical not in _CANONICALIZATIONS or any(
        t not in _TRANSFORMS for t in transforms
    ):
        raise SamlError(
            "saml_signature_algorithm",
            "The signature uses a transform that is refused.",
        )


def _check_signatures_placed(document: _Document, allowed: set[Element | None]) -> None:
    for signature in document.root.iter(_q("ds", "Signature")):
        if signature not in allowed:
            raise SamlError(
                "saml_wrapping", "The Response carries a signature out of place."
            )


def _verify_or_refuse(
    document: _Document, node: str, element: Element, cert_files: list[str]
) -> bool:
    if _signature_verifies(document.data, node, element.get("ID", ""), cert_files):
        return True
    what = "Response" if node == _RESPONSE_NODE else "assertion"
    raise SamlError(
        "saml_signature_invalid",
        f"The {what}'s signature does not verify with the IdP's certificate.",
        details={"signed": what.lower()},
    )


def _decrypt(
    document: _Document, keys: Sequence[str | os.PathLike[str]]
) -> tuple[_Document, Element]:
    """The decrypted document and its assertion, which must sit where the
    EncryptedAssertion did, alone (the ciphertext itself proves nothing:
    anyone may encrypt to our certificate)."""
    if not keys:
        raise SamlError(
            "saml_encrypted", "The assertion is encrypted and no key can decrypt it."
        )
    if len(list(document.root.iter(_q("xenc", "EncryptedData")))) != 1:
        raise SamlError("saml_wrapping", "The Response holds other encrypted data.")
    for key in keys:
        try:
            data = _xmlsec().decrypt_document(document.data, os.fspath(key))
            break
        except XmlsecError:
            continue
    else:
        raise SamlError(
            "saml_decrypt_failed",
            "The encrypted assertion could not be decrypted with our keys.",
        )
    decrypted = _Document.parse(data)
    root = decrypted.root
    if root.tag != _q("samlp", "Response") or root.get("ID") != document.root.get("ID"):
        raise SamlError("saml_malformed", "The decrypted Response is not the one sent.")
    _check_unique_ids(decrypted)
    assertions = list(root.iter(_q("saml", "Assertion")))
    wrappers = list(root.iter(_q("saml", "EncryptedAssertion")))
    if len(assertions) != 1 or len(wrappers) != 1:
        raise SamlError(
            "saml_assertion_count",
            "The encrypted assertion held other than one assertion.",
        )
    assertion, wrapper = assertions[0], wrappers[0]
    if (
        decrypted.parents.get(assertion) is not wrapper
        or decrypted.parents.get(wrapper) is not root
        or root.find(f".//{_q('xenc', 'EncryptedData')}") is not None
    ):
        raise SamlError("saml_wrapping", "The decrypted assertion is out of place.")
    return decrypted, assertion
