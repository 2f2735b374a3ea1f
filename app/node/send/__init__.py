"""Sending results: the outbox drained over C-STORE (with storage commitment) or STOW-RS, per destination."""
