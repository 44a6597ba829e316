"""Gunicorn settings for `idp serve`; config/gunicorn.conf.py is the copy
operators read and may pass to gunicorn themselves.

gthread workers: sign-ins wait on argon2 in a few threads (bounded by the
hash semaphore) while the other threads keep answering checks.
"""

wsgi_app = "idp.wsgi:app"
worker_class = "gthread"
# `idp serve` passes --bind, --workers and --threads from its options and
# the [server] settings.
bind = "127.0.0.1:8000"
workers = 2
threads = 8
# Requests are small; a slow client should not hold a thread for long.
timeout = 30
graceful_timeout = 20
keepalive = 5
limit_request_line = 8190
limit_request_fields = 100
# Gunicorn's access log would print paths that carry invitation and reset
# tokens; the application logs each request with its route pattern instead.
accesslog = None
errorlog = "-"
loglevel = "info"
# Trust X-Forwarded-* only through the application's own trusted-proxy
# rules, never gunicorn's.
forwarded_allow_ips = ""
proxy_allow_ips = ""
# Gunicorn 25+ opens a control socket at one fixed path per user; two
# instances on one host would fight over it, and nothing here uses it.
control_socket_disable = True
