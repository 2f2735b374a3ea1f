"""Where results go: a DIMSE peer (C-STORE, optionally with Storage Commitment) or a DICOMweb STOW-RS service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIMSE = "dimse"
STOW = "stow"


@dataclass(frozen=True)
class Destination:
    """One configured destination; each has its own outbox rows and retry state in the journal."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    type: str = DIMSE
    url: str = ""
    token_file: Path | None = None
    storage_commitment: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Destination:
        """From a settings mapping (app/config.py has validated it)."""
        kind = str(data.get("type") or DIMSE)
        token = data.get("token_file")
        return cls(
            name=str(data.get("name") or data.get("ae_title") or data.get("url")),
            ae_title=str(data.get("ae_title") or ""), host=str(data.get("host") or ""),
            port=int(data.get("port") or 0), tls=bool(data.get("tls", False)), type=kind,
            url=str(data.get("url") or ""), token_file=Path(token) if token else None,
            storage_commitment=bool(data.get("storage_commitment", False)),
        )

    @property
    def address(self) -> str:
        """How the destination is reached, for logs, the audit and the status page."""
        if self.type == STOW:
            return self.url
        return f"{self.ae_title}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"
