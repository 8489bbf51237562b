"""Talking to model providers: the HTTP client and its pool, SSE parsing, usage extraction and token estimates, redaction."""
