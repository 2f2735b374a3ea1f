"""The Storage SCU: C-STORE result files to one destination with pynetdicom, status checked per instance."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from app.node.send.destinations import Destination

log = logging.getLogger(__name__)
# Success, and the warnings that mean the object was stored (coerced, elements discarded, mismatch).
STORED = (0x0000, 0xB000, 0xB006, 0xB007)


class DestinationUnavailable(ConnectionError):
    """No association could be established (peer down, rejected, TLS failure)."""


@dataclass(frozen=True)
class SendResult:
    """One instance's answer from the peer."""

    path: Path
    status: int | None
    comment: str

    @property
    def stored(self) -> bool:
        return self.status in STORED


def client_ssl_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS for outgoing associations: verify the peer against ``ca``; present our certificate if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    context.check_hostname = False  # DICOM peers are addressed by IP; trust is the CA
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    return context


def send_files(
    paths: Sequence[Path], destination: Destination, calling_ae: str, ssl_context: ssl.SSLContext | None = None,
    timeout: float = 60.0,
) -> list[SendResult]:
    """C-STORE each file on one association; raises DestinationUnavailable if none is established."""
    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    syntaxes: dict[str, set[str]] = {}
    for dataset in datasets:
        syntaxes.setdefault(str(dataset.SOPClassUID), {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(
            str(dataset.file_meta.TransferSyntaxUID))
    contexts = [build_context(sop_class, sorted(ts)) for sop_class, ts in syntaxes.items()]
    tls_args = (ssl_context, destination.host) if destination.tls and ssl_context else None
    if destination.tls and ssl_context is None:
        raise DestinationUnavailable(f"{destination.name}: TLS requested but no TLS settings configured")
    try:
        assoc = ae.associate(destination.host, destination.port, contexts, ae_title=destination.ae_title,
                             tls_args=tls_args)
    except (OSError, ssl.SSLError) as error:
        raise DestinationUnavailable(f"{destination.name}: {error}") from error
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no association"
        raise DestinationUnavailable(f"{destination.name} ({destination.ae_title}@{destination.host}:"
                                     f"{destination.port}): {why}")
    results = []
    try:
        for path, dataset in zip(paths, datasets, strict=True):
            answer = assoc.send_c_store(dataset)
            status = int(answer.Status) if "Status" in answer else None
            comment = str(answer.get("ErrorComment", "")) if answer else "no response (connection lost)"
            results.append(SendResult(path, status, comment))
            if status is None:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def echo(destination: Destination, calling_ae: str, ssl_context: ssl.SSLContext | None = None) -> bool:
    """C-ECHO: whether the destination answers."""
    ae = AE(calling_ae)
    ae.add_requested_context(Verification)
    tls_args = (ssl_context, destination.host) if destination.tls and ssl_context else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()
