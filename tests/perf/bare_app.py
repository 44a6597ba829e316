"""The ceiling for our stack: a Flask endpoint that answers 200 and does
nothing else, served by gunicorn with the same settings as `idp serve`."""

from flask import Flask

app = Flask(__name__)


@app.get("/auth/check")
def check() -> tuple[str, int]:
    return "", 200
