"""The WSGI entry point gunicorn loads: `idp.wsgi:app`."""

from idp.app import create_app
from idp.logs import configure
from idp.settings import load_settings

_settings = load_settings()
configure(_settings["log"]["format"], _settings["log"]["level"])
app = create_app(_settings)
