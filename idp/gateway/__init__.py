"""The gateway's HTTP adapters: forward-auth endpoints for nginx, Caddy and
Traefik, the published keys, and the built-in reverse proxy."""
