"""API keys: the key check on every request, dynamic keys, their stores, admin routes and CLI."""
