"""Receiving: the C-STORE SCP, the watched inbox, intake into the spool, quarantine."""
