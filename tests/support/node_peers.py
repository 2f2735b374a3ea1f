"""Real peers for the node's integration tests: Orthanc as the PACS, the node as a subprocess,
dcmtk/pynetdicom as modalities, and small synthetic studies."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from app.node.receive.intake import Intake, Limits
from app.node.receive.storage_scp import ScpConfig, StorageSCP
from app.node.send.destinations import Destination
from app.node.send.result_sender import ResultSender
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.spool import Spool
from tests.support.paths import REPO

THRESHOLD_MODEL = REPO / "tests" / "models" / "threshold"
SMALL = dict(rows=40, columns=40, slices=20, pixel_spacing=(5.0, 5.0), slice_thickness=7.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def http_json(url: str, token: str = "") -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def http_get(url: str, authorization: str = "") -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers, body), also for error answers (401, 404, 503)."""
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write_small_study(folder: Path, seed: int, roles: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")) -> Any:
    """A small four-sequence MR study (about 80 instances); ``seed`` makes its UIDs unique."""
    from app.synthetic_study import SeriesSpec, write_study
    from segmamba.synthetic import Lesion, Phantom

    specs = {
        "t1n": SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", **SMALL),
        "t1c": SeriesSpec("t1c", "AX T1 POST GAD", "axial", **SMALL),
        "t2w": SeriesSpec("t2w", "Ax T2 FSE", "axial", **SMALL),
        "t2f": SeriesSpec("t2f", "Ax T2 FLAIR", "axial", **SMALL),
    }
    phantom = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=1))
    return write_study(folder, phantom, [specs[r] for r in roles], seed=seed, patient_id=f"NODE{seed:04d}")


def copy_as_new_study(source: Path, target: Path, number: int) -> str:
    """Copy a study folder with fresh Study/Series/SOP Instance UIDs (fast: no image synthesis)."""
    from pydicom.uid import generate_uid

    target.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(entropy_srcs=[str(source), str(number), "study"])
    for path in sorted(source.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, str(dataset.SeriesInstanceUID)])
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[study_uid, str(dataset.SOPInstanceUID)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.PatientID = f"COPY{number:04d}"
        dataset.save_as(target / path.name)
    return str(study_uid)


class Orthanc:
    """An Orthanc process (Debian package) with its storage in ``folder``.

    ``modalities``: name -> (AE title, port on 127.0.0.1) of the peers it knows, e.g. the node, to
    which it sends Storage Commitment reports (N-EVENT-REPORT on a new association);
    ``dicomweb``: load the orthanc-dicomweb plugin (QIDO/WADO/STOW-RS under /dicom-web/)."""

    def __init__(self, folder: Path, aet: str = "ORTHANC", modalities: dict[str, tuple[str, int]] | None = None,
                 dicomweb: bool = False) -> None:
        self.folder = folder
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.dicomweb = dicomweb
        folder.mkdir(parents=True, exist_ok=True)
        self.configure(modalities or {})

    def configure(self, modalities: dict[str, tuple[str, int]]) -> None:
        """(Re)write the configuration; it takes effect at the next start."""
        config: dict[str, Any] = {
            "Name": "PACS", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
            "DicomModalities": {name: {"AET": aet, "Host": "127.0.0.1", "Port": port, "AllowStorageCommitment": True}
                                for name, (aet, port) in modalities.items()},
        }
        if self.dicomweb:
            config["Plugins"] = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
        (self.folder / "orthanc.json").write_text(json.dumps(config))

    @property
    def stow_url(self) -> str:
        return f"{self.url}/dicom-web"

    def sop_instance_uids(self) -> list[str]:
        """The SOP Instance UID of every instance Orthanc holds (a UID stored twice would appear twice)."""
        return [str(i["MainDicomTags"]["SOPInstanceUID"]) for i in self.get("/instances?expand") or []]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        binary = shutil.which("Orthanc")
        assert binary, "Orthanc (Debian orthanc) is not installed; run tools/setup --dev"
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen([binary, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        process = self.process

        def answers() -> Any:
            assert process.poll() is None, (self.folder / "orthanc.log").read_text()[-2000:]
            return http_json(self.url + "/system")

        wait_for(answers, 30, "Orthanc to answer")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def get(self, path: str) -> Any:
        return http_json(self.url + path)

    def segs(self) -> list[dict[str, Any]]:
        """Every SEG instance Orthanc holds, with its main DICOM tags."""
        found = []
        for instance in self.get("/instances?expand") or []:
            tags = self.get(f"/instances/{instance['ID']}/simplified-tags") or {}
            if tags.get("Modality") == "SEG":
                found.append(tags)
        return found


class NodeProcess:
    """``python -m app serve`` as a subprocess on free ports, killable and restartable."""

    def __init__(self, folder: Path, orthanc: Orthanc | None, **settings: Any) -> None:
        self.folder = folder
        self.port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.model = THRESHOLD_MODEL
        self.settings = {"quiet_seconds": 1.5, "stable_seconds": 4, "forced_seconds": 600, "job_timeout": 120,
                         "job_retries": 5, "send_backoff": 0.5, "send_backoff_max": 2, **settings}
        self.destinations = [f"PACS={orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"] if orthanc else []
        self.token = secrets.token_urlsafe(16)  # web access (SEGMAMBA_HTTP_TOKEN, not on the command line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "app", "serve", "-m", str(self.model), "--no-progress",
                "--port", str(self.port), "--http-port", str(self.http_port), "--spool", str(self.folder / "spool")]
        for destination in self.destinations:
            args += ["--destinations", destination]
        for key, value in self.settings.items():
            flag = f"--{key.replace('_', '-')}"
            args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
        return args

    def start(self, wait: bool = True) -> NodeProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "node.log", "ab")  # noqa: SIM115 - owned by the process
        env = dict(os.environ, PYTHONUNBUFFERED="1", SEGMAMBA_HTTP_TOKEN=self.token)
        self.process = subprocess.Popen(self.command(), cwd=REPO, stdout=log, stderr=log, env=env,
                                        start_new_session=True)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 120) -> None:
        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()[-3000:]
            answer = http_json(self.url + "/healthz")
            return bool(answer and answer.get("status") == "ok")

        wait_for(healthy, timeout, "the node to become healthy")

    def kill(self) -> None:
        """SIGKILL the node and its worker child (the whole process group)."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        path = self.folder / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ready(self) -> dict[str, Any] | None:
        """/readyz as JSON (also when it answers 503), None when the node does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return dict(json.loads(error.read()))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def jobs(self) -> list[dict[str, Any]]:
        return http_json(self.url + "/api/jobs", self.token) or []

    def journal_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Read the journal directly (a second reader is fine with WAL)."""
        import sqlite3

        with sqlite3.connect(self.folder / "spool" / "journal.sqlite3", timeout=10) as db:
            return db.execute(sql).fetchall()


def storescu(
    folder: Path, port: int, calling: str = "MODALITY", called: str = "SEGMAMBA"
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu: propose only what the files need (-R), scan the folder recursively."""
    binary = shutil.which("storescu")
    assert binary, "dcmtk is not installed; run tools/setup --dev"
    return subprocess.run([binary, "-R", "+sd", "+r", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                           str(folder)], capture_output=True, text=True, timeout=120)


def send_study(folder: Path, port: int, calling: str = "MODALITY", called: str = "SEGMAMBA",
               stop_after: int | None = None) -> bool:
    """pynetdicom as a modality: C-STORE every file; True only if all were answered Success."""
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    paths = sorted(p for p in folder.iterdir() if p.is_file())[:stop_after]
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    try:
        assoc = ae.associate("127.0.0.1", port, [build_context(c) for c in classes], ae_title=called)
    except OSError:
        return False
    if not assoc.is_established:
        return False
    try:
        for dataset in datasets:
            answer = assoc.send_c_store(dataset)
            if not answer or int(answer.Status) != 0:
                return False
        return True
    finally:
        if assoc.is_established:
            assoc.release()


NODE_AET = "NODE"


def write_instance(path: Path, study_uid: str) -> pydicom.Dataset:
    """A small MR instance standing in for one result file."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.Modality = "DELIVERY01", "MR"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(32)
    ds.save_as(path, enforce_file_format=True)
    return ds


class DeliveryBench:
    """A journal, a result sender and our SCP (receiving commitment reports) on free ports."""

    def __init__(self, root: Path, destinations: list[Destination], port: int, commitment_timeout: float = 30.0,
                 ) -> None:
        self.root = root
        self.spool = Spool(root / "spool")
        self.journal = Journal(self.spool.journal_path)
        self.events: Counter[tuple[str, str]] = Counter()
        self.sender = ResultSender(self.journal, destinations, NODE_AET, base_delay=0.2, max_delay=1.0,
                                   on_event=lambda kind, name: self.events.update([(kind, name)]),
                                   commitment_timeout=commitment_timeout)
        self.scp = StorageSCP(ScpConfig(NODE_AET, port), Intake(self.spool, self.journal, Limits()),
                              on_commitment=self.sender.on_commitment_report)
        self.destinations = destinations
        self.jobs = 0

    def add_job(self, outputs: int = 2) -> list[pydicom.Dataset]:
        """A finished job with ``outputs`` result files in the outbox of every destination."""
        self.jobs += 1
        study = generate_uid()
        self.journal.record_instance(InstanceRecord(generate_uid(), study, generate_uid(), MRImageStorage, "MR",
                                                    self.root / "x.dcm", 1, "MODALITY"))
        job_id = self.journal.queue_study(study, "quiet")
        claimed = self.journal.claim_job()
        assert claimed is not None and claimed["id"] == job_id
        folder = self.root / f"job{job_id}"
        folder.mkdir()
        datasets = [write_instance(folder / f"out{n}.dcm", study) for n in range(outputs)]
        kinds = ["seg", "sr", "rtstruct", "sc"]
        sends = [(d.name, str(folder / f"out{n}.dcm"), str(ds.SOPInstanceUID), kinds[n % 4], MRImageStorage)
                 for d in self.destinations for n, ds in enumerate(datasets)]
        assert self.journal.finish_job(job_id, {"segmentation": sends[0][1]}, {"infer": 0.1}, sends, claimed["runs"])
        return datasets

    def states(self) -> Counter[str]:
        return Counter(row["state"] for row in self.journal.query("SELECT state FROM outbox"))

    def deliver(self, timeout: float, what: str) -> None:
        """Run the sender until every outbox row is delivered."""
        def done() -> bool:
            self.sender.send_due()
            states = self.states()
            return set(states) == {"sent"}

        wait_for(done, timeout, what, every=0.2)

    def audit(self, event: str) -> Counter[tuple[str, str]]:
        """(destination, SOP Instance UID) -> how often ``event`` was audited."""
        rows = self.journal.query("SELECT actor, detail FROM audit WHERE event = ?", (event,))
        return Counter((row["actor"], row["detail"].split(":")[0]) for row in rows)


class Clock:
    """A settable clock for the journal and completion checker (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
