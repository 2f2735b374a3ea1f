"""The staged image entry point as OpenShift and mercure run it: an arbitrary uid in group 0, an empty
environment but the image's own variables (env -i), HOME=/, nothing writable but the volumes.

The build context is staged by packaging/build_map.py into a root-owned, world-readable folder (the
image's read-only layers, as far as uid 54321 is concerned); the volumes are folders made as the
Dockerfile makes the image's (owner 1000, group 0, mode 2775). The suite runs as root, as CI does.
As in the image, ``python3`` is the system interpreter and the packages are its user site
(PYTHONUSERBASE): here a link to the test venv's site-packages (the venv's own interpreter may lie
in a folder other uids cannot enter).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node_peers import free_port
from tests.support.paths import REPO

UID, IMAGE_UID = 54321, 1000
SYSTEM_PYTHON = Path("/usr/bin/python3")
WORLD_WRITABLE = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))


@pytest.fixture(scope="module")
def image(small_study: Any) -> Iterator[Path]:
    """A root-owned folder (0755) holding the staged build context and a study."""
    root = Path(tempfile.mkdtemp(prefix="segmamba-image-"))
    root.chmod(0o755)
    result = subprocess.run([sys.executable, str(REPO / "packaging" / "build_map.py"), "--tag", "segmamba-node:0.1.0",
                             "--models", str(REPO / "tests" / "models" / "threshold"), "--out", str(root / "map"),
                             "--context-only"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shutil.copytree(small_study.series[0].files[0].parent, root / "study")
    query = "import sys; print('%d.%d' % sys.version_info[:2])"
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", query], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version == f"{sys.version_info[0]}.{sys.version_info[1]}", "the system python3 must match the venv's"
    site = root / "userbase" / "lib" / f"python{version}" / "site-packages"
    site.parent.mkdir(parents=True)
    site.symlink_to(Path(next(p for p in sys.path if p.endswith("site-packages"))))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def volume(root: Path, name: str) -> Path:
    """A volume as the image prepares its mount points: owner 1000, group 0, mode 2775."""
    path = root / name
    path.mkdir()
    os.chown(path, IMAGE_UID, 0)
    path.chmod(0o2775)
    return path


@pytest.fixture
def volumes() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="segmamba-volumes-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def image_env(image: Path, scratch: Path, **extra: str) -> dict[str, str]:
    """Only what the image's Dockerfile sets (ENV), pointed at the staged context, plus ``extra``."""
    context = image / "map" / "context"
    env = {"PATH": "/usr/bin:/bin", "PYTHONUSERBASE": str(image / "userbase"), "HOME": "/", "TMPDIR": str(scratch),
           "HOLOSCAN_APPLICATION": str(context / "app"), "HOLOSCAN_MODEL_PATH": str(context / "models"),
           "HOLOSCAN_CONFIG_PATH": str(context / "app.config"), "HOLOSCAN_WORKDIR": str(context),
           "HOLOSCAN_LOGS_PATH": str(context / "logs"), "SEGMAMBA_PROGRESS": "false"}
    env.update(extra)
    return env


def declared_command(image: Path) -> list[str]:
    """app.json's command, with the image's /var/holoscan mapped onto the staged context."""
    context = image / "map" / "context"
    command = json.loads(json.loads((context / "map" / "app.json").read_text())["command"])
    assert command == ["/var/holoscan/segmamba-entry"]
    entry = context / Path(command[0]).name  # COPY ./segmamba-entry /var/holoscan/segmamba-entry
    assert entry.read_text().startswith("#!/bin/sh")
    return ["sh", str(entry), *command[1:]]


def as_arbitrary_uid(image: Path, env: dict[str, str], *args: str) -> list[str]:
    """``env -i`` (only ``env``), then app.json's command as uid 54321 in group 0 (OpenShift's way)."""
    return ["env", "-i", *[f"{k}={v}" for k, v in env.items()], "setpriv", f"--reuid={UID}", "--regid=0",
            "--clear-groups", *declared_command(image), *args]


def files_of_uid_outside(volumes: Path) -> set[str]:
    """Files of the uid in world-writable places other than the volumes (a read-only root would refuse)."""
    found = set()
    for top in WORLD_WRITABLE:  # os.walk skips folders that other processes remove during the walk
        for folder, dirs, files in os.walk(top):
            for name in dirs + files:
                path = Path(folder) / name
                with contextlib.suppress(OSError):
                    if path.lstat().st_uid == UID and volumes not in path.parents:
                        found.add(str(path))
    return found


def test_batch_as_any_uid_with_a_mounted_model(image: Path, volumes: Path) -> None:
    """Batch mode, the MAP contract: the study in, the results out (0644, group 0), the model swapped
    at run time by mounting another model folder over HOLOSCAN_MODEL_PATH."""
    output, scratch = volume(volumes, "output"), volume(volumes, "tmp")
    before = files_of_uid_outside(volumes)
    models = volumes / "models" / "threshold-v2"  # a read-only model mount
    shutil.copytree(REPO / "tests" / "models" / "threshold", models)
    card = json.loads((models / "metadata.json").read_text())
    (models / "metadata.json").write_text(json.dumps({**card, "version": "2.0.0"}))
    for path in [volumes / "models", *(volumes / "models").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = image_env(image, scratch, HOLOSCAN_INPUT_PATH=str(image / "study"), HOLOSCAN_OUTPUT_PATH=str(output),
                    HOLOSCAN_MODEL_PATH=str(volumes / "models"))
    result = subprocess.run(as_arbitrary_uid(image, env), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "getpwuid" not in result.stderr and "Traceback" not in result.stderr
    assert "logging to stderr only" in result.stderr  # HOLOSCAN_LOGS_PATH in the read-only image: one warning
    for name in ("segmentation.dcm", "report.json", "preview.png"):
        info = (output / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o644, name  # the PACS gateway (another uid) reads them
        assert (info.st_uid, info.st_gid) == (UID, 0), name  # group 0 from the folder's setgid bit
    report = json.loads((output / "report.json").read_text())
    assert report["model"]["version"] == "2.0.0"  # the mounted model, not the image's
    assert files_of_uid_outside(volumes) - before == set()


def get(url: str, timeout: float = 5) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_serve_as_any_uid_answers_its_probes_and_stops_cleanly(image: Path, volumes: Path) -> None:
    """Serve mode (SEGMAMBA_MODE=serve, as Kubernetes runs it): the spool volume, /healthz and /readyz,
    a clean stop on SIGTERM with no traceback, nothing written outside the volumes."""
    spool, scratch = volume(volumes, "spool"), volume(volumes, "tmp")
    before = files_of_uid_outside(volumes)
    http_port = free_port()
    env = image_env(image, scratch, SEGMAMBA_MODE="serve", SEGMAMBA_SPOOL=str(spool),
                    SEGMAMBA_PORT=str(free_port()), SEGMAMBA_HTTP_PORT=str(http_port), SEGMAMBA_LOG_FORMAT="json")
    log_path = volumes / "node.log"
    with log_path.open("w") as log:
        node = subprocess.Popen(as_arbitrary_uid(image, env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            ready: tuple[int, dict[str, Any]] = (0, {})
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and node.poll() is None:
                with contextlib.suppress(OSError):
                    ready = get(f"http://127.0.0.1:{http_port}/readyz")
                    if ready[0] == 200:
                        break
                time.sleep(0.5)
            assert ready[0] == 200, log_path.read_text()[-3000:]
            assert get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200
            node.send_signal(signal.SIGTERM)
            assert node.wait(timeout=60) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines[:5]  # JSON lines only
    assert not [line for line in lines if "Traceback" in line or '"level": "ERROR"' in line]
    journal = spool / "journal.sqlite3"
    assert journal.is_file() and (journal.stat().st_uid, journal.stat().st_gid) == (UID, 0)
    assert files_of_uid_outside(volumes) - before == set()
