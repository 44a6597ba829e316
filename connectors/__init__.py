"""Translators to the outside world: mail now; SAML, OIDC and SCIM later."""
