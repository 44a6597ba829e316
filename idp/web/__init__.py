"""HTTP adapters: parse, call a service, render."""
