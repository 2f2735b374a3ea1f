"""TLS on the Storage SCP and the SCU: a self-signed certificate (openssl CLI), one instance sent over TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.node.receive.intake import Intake
from app.node.receive.storage_scp import ScpConfig, StorageSCP, server_ssl_context
from app.node.send.storage_scu import Destination, DestinationUnavailable, client_ssl_context, send_files
from app.node.state.journal import Journal
from app.node.state.spool import Spool
from tests.support.node_peers import free_port, write_small_study


def test_instances_travel_over_tls_only(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    study = tmp_path / "study"
    write_small_study(study, seed=501, roles=("t1c",))
    spool, journal = Spool(tmp_path / "spool"), Journal(tmp_path / "spool" / "journal.sqlite3")
    port = free_port()
    scp = StorageSCP(ScpConfig("NODE", port, "127.0.0.1", (), 2, server_ssl_context(cert, key, cert, True)),
                     Intake(spool, journal))
    scp.start()
    try:
        files = sorted(study.iterdir())[:2]
        over_tls = Destination("NODE", "NODE", "127.0.0.1", port, tls=True)
        results = send_files(files, over_tls, "MODALITY", client_ssl_context(cert, cert, key))
        assert [r.status for r in results] == [0, 0]
        assert len(list(spool.studies.rglob("*.dcm"))) == 2
        with pytest.raises(DestinationUnavailable):
            send_files(files, Destination("NODE", "NODE", "127.0.0.1", port), "MODALITY", timeout=5)
        with pytest.raises(DestinationUnavailable):  # no client certificate: refused by the SCP
            send_files(files, over_tls, "MODALITY", client_ssl_context(cert), timeout=5)
    finally:
        scp.stop()
        journal.close()
