"""The Storage SCP: pynetdicom receives C-STORE and C-ECHO and hands each instance to the intake.

Accepts every storage SOP class (Segmentation included) in every transfer syntax pynetdicom knows
(uncompressed, deflate, JPEG, JPEG-LS, JPEG 2000, RLE, ...), from callers on the allow-list
(empty: anyone), up to ``max_associations`` at once; optional TLS. Each C-STORE is answered with
the intake's status (Success only once the instance is on disk and journalled).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from operators.intake import Intake

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScpConfig:
    """Where and for whom the SCP listens."""

    ae_title: str = "SEGMAMBA"
    port: int = 11112
    bind_address: str = "127.0.0.1"
    allowed_calling_aes: Sequence[str] = ()
    max_associations: int = 8
    ssl_context: ssl.SSLContext | None = None


def server_ssl_context(cert: Path, key: Path, ca: Path | None, require_client_cert: bool) -> ssl.SSLContext:
    """TLS for the SCP: our certificate, optionally verifying callers against ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca) if ca else None)
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


class StorageSCP:
    """A running (or startable) Storage SCP feeding one Intake."""

    def __init__(self, config: ScpConfig, intake: Intake) -> None:
        self.config = config
        self.intake = intake
        self.server: ThreadedAssociationServer | None = None
        ae = AE(config.ae_title)
        ae.maximum_associations = config.max_associations
        ae.require_calling_aet = list(config.allowed_calling_aes)
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae = ae

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.server = self.ae.start_server(
            (self.config.bind_address, self.config.port), block=False, evt_handlers=handlers,
            ssl_context=self.config.ssl_context,
        )
        log.info("storage SCP %s listening on %s:%d%s", self.config.ae_title, self.config.bind_address,
                 self.config.port, " (TLS)" if self.config.ssl_context else "")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_store(self, event: Any) -> Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        address = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as error:  # a dataset pynetdicom cannot re-encode
            result_status, reason = 0xC000, f"cannot decode the dataset: {error}"
        else:
            result = self.intake.accept(data, f"{calling}@{address}")
            result_status, reason = result.status, result.reason
        status = Dataset()
        status.Status = result_status
        if result_status:
            status.ErrorComment = reason[:64]
        return status

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        log.warning("association from %s@%s:%s rejected", str(requestor.ae_title).strip(), requestor.address,
                    requestor.port)
