"""Sending results: the outbox drained over C-STORE."""
