"""Durable state: the spool of received files, the SQLite journal, retention."""
