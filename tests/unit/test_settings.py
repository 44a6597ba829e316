from pathlib import Path

import pytest

from idp.settings import SettingsError, load_defaults, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_documented_defaults_equal_packaged_defaults():
    documented = (ROOT / "config" / "default.toml").read_text()
    assert documented == (ROOT / "idp" / "defaults.toml").read_text()
    assert load_defaults()["public_url"] == "http://localhost:8000"


def test_environment_overrides_top_level_and_sections():
    settings = load_settings(
        environ={
            "IDP_PUBLIC_URL": "https://auth.example.com",
            "IDP_PASSWORDS__MIN_LENGTH": "14",
            "IDP_GATEWAY__TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16",
            "IDP_PASSWORDS__REFUSE_COMMON": "false",
        }
    )
    assert settings.public_url == "https://auth.example.com"
    assert settings["passwords"]["min_length"] == 14
    assert settings["passwords"]["refuse_common"] is False
    assert settings["gateway"]["trusted_proxies"] == ["10.0.0.5", "10.1.0.0/16"]


@pytest.mark.parametrize(
    "var",
    ["IDP_PUBLIC_URLS", "IDP_PASSWORDS__MINLENGTH", "IDP_NOPE__X", "IDP_PASSWORDS"],
)
def test_unknown_environment_variable_stops_start_up(var):
    with pytest.raises(SettingsError, match=var):
        load_settings(environ={var: "1"})


def test_unknown_key_in_file_stops_start_up(tmp_path):
    path = tmp_path / "prod.toml"
    path.write_text("[passwords]\nmin_lenght = 10\n")
    with pytest.raises(SettingsError, match="passwords.min_lenght"):
        load_settings(environ={"IDP_CONFIG": str(path)})


@pytest.mark.parametrize(
    "env",
    [
        {"IDP_PASSWORDS__MIN_LENGTH": "7"},
        {"IDP_PASSWORDS__MIN_LENGTH": "twelve"},
        {"IDP_PUBLIC_URL": "ftp://x"},
        {"IDP_PUBLIC_URL": "https://x.example/sub"},
        {"IDP_SMTP_URL": "http://mail"},
        {"IDP_GATEWAY__TRUSTED_PROXIES": "10.0.0.300"},
    ],
)
def test_bad_values_are_refused(env):
    with pytest.raises(SettingsError):
        load_settings(environ=env)


@pytest.mark.parametrize(
    "public_url,domain,ok",
    [
        ("https://auth.example.com", "example.com", True),
        ("https://auth.example.com", ".example.com", True),
        ("https://auth.example.com", "auth.example.com", True),
        ("https://auth.example.com", "other.com", False),
        ("https://auth.example.com", "ample.com", False),
        ("https://example.com", "auth.example.com", False),
    ],
)
def test_cookie_domain_must_hold_the_public_host(public_url, domain, ok):
    environ = {"IDP_PUBLIC_URL": public_url, "IDP_SESSIONS__COOKIE_DOMAIN": domain}
    if ok:
        load_settings(environ=environ)
        return
    with pytest.raises(SettingsError, match="sessions.cookie_domain"):
        load_settings(environ=environ)
