"""Storage Commitment Push Model (PS3.4 J), the SCU side: ask a PACS to commit instances (N-ACTION) and
read its answer (N-EVENT-REPORT, on a new association to our SCP or on the one that asked).

The request carries a Transaction UID and the (SOP Class, SOP Instance) of every instance; the
report names the same transaction with the committed instances (Referenced SOP Sequence) and the
failed ones with a Failure Reason (Failed SOP Sequence)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from app.node.send.destinations import Destination
from app.node.send.storage_scu import DestinationUnavailable

log = logging.getLogger(__name__)
# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5) and its action type.
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1
# Failure reasons (PS3.3 C.14.1.1) by code, for the journal and the status page.
FAILURE_REASONS = {0x0110: "processing failure", 0x0112: "no such object instance", 0x0213: "resource limitation",
                   0x0122: "referenced SOP class not supported", 0x0119: "class/instance conflict",
                   0x0131: "duplicate transaction UID"}


@dataclass(frozen=True)
class CommitmentReport:
    """What a PACS reported for one transaction."""

    transaction_uid: str
    committed: frozenset[str]
    failed: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> reason


def failure_text(code: int | None) -> str:
    if code is None:
        return "failed (no reason given)"
    return f"0x{code:04X} {FAILURE_REASONS.get(code, 'failure')}"


def parse_report(info: Dataset) -> CommitmentReport:
    """The Event Information of an N-EVENT-REPORT (event type 1: all committed, 2: some failed)."""
    committed = frozenset(str(item.ReferencedSOPInstanceUID) for item in info.get("ReferencedSOPSequence", []))
    failed = {str(item.ReferencedSOPInstanceUID): failure_text(item.get("FailureReason"))
              for item in info.get("FailedSOPSequence", [])}
    return CommitmentReport(str(info.get("TransactionUID", "")), committed, failed)


def commitment_request(transaction_uid: str, instances: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: the transaction and its (SOP Class UID, SOP Instance UID)s."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


def report_handler(on_report: Callable[[CommitmentReport, str], None]) -> Callable[[Any], tuple[int, None]]:
    """An EVT_N_EVENT_REPORT handler that hands each Storage Commitment report to ``on_report(report, caller)``."""

    def handle(event: Any) -> tuple[int, None]:
        caller = str(event.assoc.requestor.ae_title).strip() if event.assoc.is_acceptor else \
            str(event.assoc.acceptor.ae_title).strip()
        if str(event.request.AffectedSOPClassUID) != StorageCommitmentPushModel:
            return 0x0112, None  # no such SOP instance: we only take commitment reports
        try:
            report = parse_report(event.event_information)
        except (AttributeError, KeyError, ValueError) as error:
            log.warning("storage commitment report from %s unreadable: %s", caller, error)
            return 0x0110, None
        try:
            on_report(report, caller)
        except Exception:  # the journal could not record it: processing failure, the PACS may resend
            log.exception("storage commitment report %s from %s not recorded", report.transaction_uid, caller)
            return 0x0110, None
        return 0x0000, None

    return handle


def request_commitment(
    destination: Destination, calling_ae: str, transaction_uid: str, instances: Sequence[tuple[str, str]],
    on_report: Callable[[CommitmentReport, str], None], ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0, settled: Callable[[], bool] | None = None, linger: float = 0.0,
) -> None:
    """Send the N-ACTION; raises DestinationUnavailable when no association or no Success answer.

    A report the PACS sends on this same association goes to ``on_report`` too: after the answer
    the association stays open up to ``linger`` seconds, until ``settled()`` (the transaction has
    its report, by whichever association it came)."""
    ae = AE(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StorageCommitmentPushModel)
    tls_args = (ssl_context, destination.host) if destination.tls and ssl_context else None
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, report_handler(on_report))])
    except (OSError, ssl.SSLError) as error:
        raise DestinationUnavailable(f"{destination.name}: storage commitment: {error}") from error
    if not assoc.is_established:
        raise DestinationUnavailable(f"{destination.name} ({destination.address}): storage commitment association "
                                     f"{'rejected' if assoc.is_rejected else 'not established'}")
    try:
        if not any(c.abstract_syntax == StorageCommitmentPushModel for c in assoc.accepted_contexts):
            raise DestinationUnavailable(f"{destination.name}: does not accept Storage Commitment Push Model")
        status, _reply = assoc.send_n_action(commitment_request(transaction_uid, instances), REQUEST_COMMITMENT,
                                             StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        code = int(status.Status) if status and "Status" in status else None
        if code != 0:
            raise DestinationUnavailable(f"{destination.name}: N-ACTION (storage commitment) answered "
                                         f"{'nothing' if code is None else f'0x{code:04X}'}")
        deadline = time.monotonic() + linger
        while settled is not None and assoc.is_established and time.monotonic() < deadline and not settled():
            time.sleep(0.05)
    finally:
        if assoc.is_established:
            assoc.release()
