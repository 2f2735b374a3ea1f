"""DICOMweb STOW-RS: store result files at a destination with dicomweb-client, answer read per instance.

The STOW-RS response lists the stored instances (Referenced SOP Sequence) and the refused ones
with a Failure Reason (Failed SOP Sequence); an instance the response does not name counts as
not stored. A bearer token, when configured, is read from its file at every send (rotation needs
no restart)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from app.node.send.destinations import Destination
from app.node.send.storage_scu import DestinationUnavailable, SendResult


def _headers(destination: Destination) -> dict[str, str]:
    if destination.token_file is None:
        return {}
    try:
        token = destination.token_file.read_text().strip()
    except OSError as error:
        raise DestinationUnavailable(f"{destination.name}: token file {destination.token_file} cannot be read: "
                                     f"{error.strerror or error}") from error
    if not token:
        raise DestinationUnavailable(f"{destination.name}: token file {destination.token_file} is empty")
    return {"Authorization": f"Bearer {token}"}


def stow_files(paths: Sequence[Path], destination: Destination, timeout: float = 60.0,
               ca: Path | None = None) -> list[SendResult]:
    """POST the files as one multipart STOW-RS request (https verified against ``ca`` when given, else
    the system's CAs); raises DestinationUnavailable when the service cannot be reached or refuses
    the whole request (HTTP error)."""
    datasets = [pydicom.dcmread(path) for path in paths]
    session = requests.Session()
    if ca is not None:
        session.verify = str(ca)
    client = DICOMwebClient(destination.url, session=session, headers=_headers(destination), timeout=timeout)
    client.set_http_retry_params(retry=False)  # the outbox retries, with its back-off per destination
    try:
        response = client.store_instances(datasets)
    except requests.RequestException as error:
        answer = getattr(error, "response", None)
        why = f"HTTP {answer.status_code} {answer.reason}" if answer is not None else type(error).__name__
        raise DestinationUnavailable(f"{destination.name} ({destination.url}): STOW-RS failed: {why}") from error
    stored = {str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])}
    failed = {str(item.ReferencedSOPInstanceUID): item.get("FailureReason")
              for item in response.get("FailedSOPSequence", [])}
    results = []
    for path, dataset in zip(paths, datasets, strict=True):
        uid = str(dataset.SOPInstanceUID)
        if uid in stored:
            results.append(SendResult(path, 0x0000, ""))
        else:
            reason = failed.get(uid)
            results.append(SendResult(path, int(reason) if reason is not None else 0xC000,
                                      "refused by the STOW-RS service" if uid in failed else
                                      "not named in the STOW-RS response"))
    return results

