"""The Storage SCP: pynetdicom receives C-STORE and C-ECHO and hands each instance to the intake.

Accepts every storage SOP class (Segmentation included) in every transfer syntax pynetdicom knows
(uncompressed, deflate, JPEG, JPEG-LS, JPEG 2000, RLE, ...), from callers on the allow-list
(empty: anyone), addressed to our AE title (else A-ASSOCIATE-RJ, reason 7 "called AE title not
recognised"; an unknown caller gets reason 3), optionally over TLS. Each C-STORE is answered
with the intake's status (Success only once the instance is on disk and journalled). A PACS that
commits our results reports on a new association (N-EVENT-REPORT, Storage Commitment Push Model):
the report goes to ``on_commitment`` (the result sender's journal update).

Intake cannot be starved by connections that send nothing: a new connection has
``request_timeout`` seconds for its TLS handshake and first bytes (waited for in its own thread,
never in the accept loop, before pynetdicom creates an association, so a silent connection holds
no association slot and one closed by its peer goes at once; then pynetdicom's ACSE timeout, the
same value, applies to the rest of the A-ASSOCIATE-RQ). One IP address may hold ``max_per_peer``
connections (more are closed at once), ``8 * max_associations`` may be silent in all, and up to
``max_associations`` associations may be open.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import select
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from app.config import DEFAULTS, Settings
from app.node.receive.intake import CANNOT_UNDERSTAND, Expected, Intake, comment_text
from app.node.send.storage_commitment import CommitmentReport, report_handler
from operators.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScpConfig:
    """Where and for whom the SCP listens, and how long it waits (defaults: the settings' defaults)."""

    ae_title: str = DEFAULTS.ae_title
    port: int = DEFAULTS.port
    bind_address: str = DEFAULTS.bind_address
    allowed_calling_aes: Sequence[str] = DEFAULTS.allowed_calling_aes
    max_associations: int = DEFAULTS.max_associations
    ssl_context: ssl.SSLContext | None = None
    request_timeout: float = DEFAULTS.association_request_timeout  # until the A-ASSOCIATE-RQ (TLS handshake too)
    max_per_peer: int = DEFAULTS.max_associations_per_peer  # concurrent connections from one IP address
    network_timeout: float = DEFAULTS.dicom_network_timeout  # pynetdicom: an association silent this long is aborted
    dimse_timeout: float = DEFAULTS.dicom_dimse_timeout  # pynetdicom: the wait for a DIMSE message

    @classmethod
    def from_settings(cls, settings: Settings, ssl_context: ssl.SSLContext | None = None) -> ScpConfig:
        """The SCP of the node's settings, with ``ssl_context`` (see ``scp_ssl_context``)."""
        return cls(settings.ae_title, settings.port, settings.bind_address, settings.allowed_calling_aes,
                   settings.max_associations, ssl_context, settings.association_request_timeout,
                   settings.max_associations_per_peer, settings.dicom_network_timeout, settings.dicom_dimse_timeout)


def _readable(path: Path, what: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise ConfigurationError(f"{what} {path} cannot be read: {error.strerror or error}") from error


def server_ssl_context(cert: Path, key: Path, ca: Path | None, require_client_cert: bool) -> ssl.SSLContext:
    """TLS for the SCP: our certificate, optionally verifying callers against ``ca``.

    Any file that is missing, unreadable or not a matching PEM certificate/key is a
    ConfigurationError naming the file: the node then refuses to start rather than listen in plain."""
    if require_client_cert and ca is None:
        raise ConfigurationError("tls_require_client_cert needs tls_ca (the CA that signs the callers' certificates)")
    for path, what in ((cert, "tls_cert"), (key, "tls_key"), *(((ca, "tls_ca"),) if ca else ())):
        _readable(path, what)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as error:
        raise ConfigurationError(f"tls_cert {cert} / tls_key {key}: not a PEM certificate with its private key "
                                 f"({error.reason or error})") from error
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as error:
            raise ConfigurationError(f"tls_ca {ca}: not a PEM CA bundle ({error.reason or error})") from error
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


def scp_ssl_context(cert: Path | None, key: Path | None, ca: Path | None,
                    require_client_cert: bool) -> ssl.SSLContext | None:
    """The SCP's TLS context from the settings: None when no TLS setting is given; a certificate
    without its key (or the reverse), or client verification without TLS, is a ConfigurationError."""
    if cert is None and key is None:
        if require_client_cert:
            raise ConfigurationError("tls_require_client_cert is set but TLS is not (tls_cert and tls_key)")
        return None
    if cert is None or key is None:
        given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        raise ConfigurationError(f"{given} is set but {missing} is not: refusing to start without TLS")
    return server_ssl_context(cert, key, ca, require_client_cert)


def peer_key(address: str) -> str:
    """The IP address a per-peer limit counts (IPv4-mapped IPv6 addresses as IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class _GuardedHandler(RequestHandler):
    """Waits, in the connection's own thread and at most the request timeout, for the peer to say
    something (TLS handshake included) before pynetdicom builds an association for it: a silent
    connection never takes an association slot, and one the peer closed is dropped at once."""

    server: _GuardedServer

    def handle(self) -> None:
        peer = peer_key(str(self.client_address[0]))
        try:
            if self._peer_speaks(peer):
                super().handle()
            else:
                self.server.shutdown_request(self.request)
        finally:
            self.server.release_pending(peer)

    def _peer_speaks(self, peer: str) -> bool:
        sock = self.request
        timeout = self.server.request_timeout
        sock.settimeout(timeout)
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.do_handshake()
                return bool(sock.pending() or select.select([sock], [], [], timeout)[0])
            if sock.recv(1, socket.MSG_PEEK):
                return True
            log.info("connection from %s closed by the peer before its A-ASSOCIATE-RQ", peer)
            return False
        except TimeoutError:
            log.info("connection from %s closed: nothing received within %.1f s", peer, timeout)
            return False
        except OSError as error:  # ssl.SSLError included: a failed handshake
            log.warning("connection from %s closed: %s", peer, error)
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(None)


class _GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a per-peer connection limit and lazy TLS handshakes."""

    request_timeout = ScpConfig.request_timeout  # both set from the ScpConfig on start
    max_per_peer = ScpConfig.max_per_peer
    max_pending = 256  # silent connections in all (each holds a thread until the request timeout)
    daemon_threads = True  # stopping never waits for a silent connection's timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending: Counter[str] = Counter()
        self._pending_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without handshaking: the accept loop never waits for one peer."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection while its address holds fewer than ``max_per_peer`` (associations and
        connections still silent) and fewer than ``max_pending`` connections are silent in all."""
        peer = peer_key(str(client_address[0]))
        live = sum(1 for a in self.ae.active_associations if a.is_acceptor and peer_key(a.requestor.address) == peer)
        with self._pending_lock:
            if live + self._pending[peer] >= self.max_per_peer or sum(self._pending.values()) >= self.max_pending:
                log.warning("connection from %s closed: %d connections from that address already (limit %d)",
                            peer, live + self._pending[peer], self.max_per_peer)
                return False
            self._pending[peer] += 1
        return True

    def release_pending(self, peer: str) -> None:
        with self._pending_lock:
            self._pending[peer] -= 1
            if self._pending[peer] <= 0:
                del self._pending[peer]


class StorageSCP:
    """A running (or startable) Storage SCP feeding one Intake."""

    def __init__(self, config: ScpConfig, intake: Intake,
                 on_commitment: Callable[[CommitmentReport, str], None] | None = None) -> None:
        self.config = config
        self.intake = intake
        self.on_commitment = on_commitment
        self.server: ThreadedAssociationServer | None = None
        ae = AE(config.ae_title)
        ae.maximum_associations = config.max_associations
        ae.require_calling_aet = list(config.allowed_calling_aes)
        ae.require_called_aet = True
        ae.network_timeout = config.network_timeout
        ae.acse_timeout = config.request_timeout  # the wait for A-ASSOCIATE-RQ (and A-RELEASE)
        ae.dimse_timeout = config.dimse_timeout
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        if on_commitment is not None:  # the PACS, as requestor, may propose its SCP role for the report
            ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.ae = ae

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        if self.on_commitment is not None:
            handlers.append((evt.EVT_N_EVENT_REPORT, report_handler(self.on_commitment)))
        server = self.ae.make_server(
            (self.config.bind_address, self.config.port), evt_handlers=handlers, ssl_context=self.config.ssl_context,
            server_class=_GuardedServer, request_handler=_GuardedHandler,
        )
        server.request_timeout = self.config.request_timeout
        server.max_per_peer = self.config.max_per_peer
        server.max_pending = 8 * self.config.max_associations
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True).start()
        self.ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it
        self.server = server
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
            log.warning("C-STORE from %s@%s: cannot decode the dataset: %s", calling, address, type(error).__name__)
            result_status, comment = CANNOT_UNDERSTAND, "cannot decode the dataset"
        else:
            expected = Expected(str(event.context.abstract_syntax), str(event.request.AffectedSOPInstanceUID or ""))
            try:
                result = self.intake.accept(data, f"{calling}@{address}", expected)
            except Exception:  # a bug in the intake: never pynetdicom's comment-less 0xC211
                log.exception("intake failed on a C-STORE from %s@%s", calling, address)
                result_status, comment = CANNOT_UNDERSTAND, "internal error of the receiving node"
            else:
                result_status, comment = result.status, result.comment
        status = Dataset()
        status.Status = result_status
        if result_status:
            status.ErrorComment = comment_text(comment)
        return status

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        log.warning("association from %s@%s:%s to %r rejected", str(requestor.ae_title).strip(), requestor.address,
                    requestor.port, called)
