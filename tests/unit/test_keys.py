import stat

import pytest

from idp.keys import KeysMissing, ensure_keys, load_keys, rotate_keys


def test_keys_are_created_private_and_only_once(tmp_path):
    made = ensure_keys(tmp_path / "keys")
    # secret, signing, encryption, and the SAML key (its certificate beside it)
    assert len(made) == 4
    saml = [p for p in made if p.name.startswith("saml-")]
    assert saml and saml[0].with_suffix(".crt").read_text().startswith(
        "-----BEGIN CERTIFICATE-----"
    )
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert ensure_keys(tmp_path / "keys") == []


def test_rotation_keeps_old_keys_verifying(tmp_path):
    folder = tmp_path / "keys"
    ensure_keys(folder)
    before = load_keys(folder)
    secret = before.encryption.encrypt(b"totp secret")
    rotate_keys(folder)
    after = load_keys(folder)
    assert after.secret_key != before.secret_key
    assert before.secret_key in after.secrets
    assert len(after.signing) == 2
    # Both SAML certificates stay published; the newest signs.
    assert len(after.saml) == 2
    assert after.saml[0].key_file.name > after.saml[1].key_file.name
    assert after.encryption.decrypt(secret) == b"totp secret"


def test_missing_keys_name_the_command(tmp_path):
    with pytest.raises(KeysMissing, match="idp init"):
        load_keys(tmp_path)
