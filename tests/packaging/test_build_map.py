"""MAP packaging (packaging/build_map.py) and the deployment descriptors (packaging/deploy/).

The packager (holoscan-cli 4.2.0, pinned) runs offline to a build context; the context's
manifests, Dockerfile, requirements and entry point are checked, and the staged application is
run the way the image runs it, on a synthetic study with the deterministic test model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from dataclasses import fields
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings
from tests.support.paths import REPO

PACKAGING = REPO / "packaging"
DEPLOY = PACKAGING / "deploy"
THRESHOLD_MODEL = REPO / "tests" / "models" / "threshold"
APP_YAML = yaml.safe_load((REPO / "app.yaml").read_text())
VERSION = str(APP_YAML["application"]["version"])
IMAGE = f"segmamba-node:{VERSION}"
PACKAGER_IMAGE = f"segmamba-node-x64-workstation-dgpu-linux-amd64:{VERSION}"
EXIT_NO_ENGINE = 3
# Variables read by the image's entry point and its __main__.py, not by app/config.py.
ENTRY_VARIABLES = {"SEGMAMBA_MODE", "SEGMAMBA_INPUT_IGNORE"}
PYTHON_BIN = str(Path(sys.executable).parent)
ENTRY_POINT = "/var/holoscan/segmamba-entry"
# MONAI Deploy Workflow Manager: the argo task arguments it accepts (ArgoParameters.VaildParameters in
# its source; anything else makes POST /workflows answer 400) and the one it requires.
ARGO_TASK_ARGS = {"namespace", "server_url", "allow_insecure", "workflow_template_name", "timeoutSeconds",
                  "apiToken", "endpoint", "username", "password", "exchange", "virtualHost", "resources",
                  "parameters", "priority", "cpu", "memory", "gpu_required"}
QUANTITY = r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?"
# mercure (0.4.1+): docker_arguments it refuses unless unsafe arguments are allowed (host access).
MERCURE_UNSAFE = {"device_requests", "privileged", "cap_add", "devices", "volumes", "network_mode", "pid_mode",
                  "ipc_mode", "security_opt", "userns_mode", "user", "entrypoint", "command"}


def build_map(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the build command as documented (a script, not ``python -m``)."""
    return subprocess.run([sys.executable, str(PACKAGING / "build_map.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env or dict(os.environ), check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The build output folder, made where no Docker engine answers (DOCKER_HOST points nowhere)."""
    out = tmp_path_factory.mktemp("map") / "out"
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    result = build_map("--tag", IMAGE, "--models", str(THRESHOLD_MODEL), "--out", str(out), env=env)
    return out, result


@pytest.fixture(scope="module")
def context(built: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    out, result = built
    assert result.returncode == EXIT_NO_ENGINE, result.stdout + result.stderr
    return out / "context"


@pytest.fixture(scope="module")
def study(small_study: Any) -> Path:
    """A small four-sequence brain MRI study (flat folder of DICOM files)."""
    return small_study.series[0].files[0].parent


def dockerfile_lines(context: Path) -> list[str]:
    return [line.strip() for line in (context / "Dockerfile").read_text().splitlines() if line.strip()]


def quantity(text: str) -> float:
    """A Kubernetes-style memory quantity in GiB ("16Gi", "512Mi")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi)", str(text))
    assert match, text
    return float(match.group(1)) / (1 if match.group(2) == "Gi" else 1024)


# --- the packager's output ---------------------------------------------------------------------

def test_without_engine_the_build_stops_with_a_complete_context(
    built: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, result = built
    assert result.returncode == EXIT_NO_ENGINE, result.stdout + result.stderr
    assert "no Docker engine" in result.stdout and "build context is complete" in result.stdout
    context = out / "context"
    for name in ("Dockerfile", "map/app.json", "map/pkg.json", "app.config", "pip/requirements.txt", "tools",
                 "segmamba-entry", "app/__main__.py", "app/app/cli.py", "app/operators/series_rules.json",
                 "app/segmamba/__init__.py", "app/requirements.txt", "app/app.yaml", "models/threshold/metadata.json"):
        assert (context / name).is_file(), name
    assert os.access(context / "segmamba-entry", os.X_OK)
    assert not list(context.rglob("__pycache__"))
    info = json.loads((out / "build-info.json").read_text())
    assert info["image_built"] is False and info["model"] == "threshold"
    assert set(info["image_tags"]) == {IMAGE, PACKAGER_IMAGE}


def test_app_json_is_the_map_contract(context: Path) -> None:
    app = json.loads((context / "map" / "app.json").read_text())
    entrypoint = json.loads([line for line in dockerfile_lines(context) if line.startswith("ENTRYPOINT")][-1]
                            .removeprefix("ENTRYPOINT"))
    assert json.loads(app["command"]) == entrypoint == [ENTRY_POINT]  # what the image really starts
    assert app["liveness"]["type"] == app["readiness"]["type"] == "http-get"  # serve mode's probes
    assert (app["liveness"]["path"], app["readiness"]["path"]) == ("/healthz", "/readyz")
    assert app["liveness"]["port"] == app["readiness"]["port"] == APP_YAML["settings"]["http_port"]
    assert app["input"]["formats"] == APP_YAML["application"]["input-formats"] == ["file"]
    assert app["output"]["formats"] == APP_YAML["application"]["output-formats"] == ["file"]
    assert app["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert app["environment"]["HOLOSCAN_CONFIG_PATH"] == "/var/holoscan/app.yaml"
    assert (app["sdk"], app["sdkVersion"], app["version"]) == ("monai-deploy", "4.0.0", VERSION)


def test_pkg_json_has_the_model_and_resources_the_network_needs(context: Path) -> None:
    pkg = json.loads((context / "map" / "pkg.json").read_text())
    assert pkg["modelRoot"] == "/opt/holoscan/models"
    assert pkg["models"] == {"threshold": "/opt/holoscan/models/threshold"}
    resources = pkg["resources"]
    assert resources == APP_YAML["resources"]
    # SegMamba, 128^3 windows: ~4 GiB of GPU memory in fp16; 10-16 GiB of host memory on the CPU.
    assert resources["gpu"] >= 1
    assert 4 < quantity(resources["gpuMemory"]) <= 16
    assert quantity(resources["memory"]) >= 10
    assert int(resources["cpu"]) >= 2


def locked_versions(text: str) -> dict[str, str]:
    """name -> version of a requirements/lock text's ``name==version`` lines."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


LOCK = PACKAGING / "requirements-image.lock"


def test_image_requirements_are_the_lock_with_the_sdk_pins(context: Path) -> None:
    image = (context / "pip" / "requirements.txt").read_text()
    assert image == LOCK.read_text()
    assert "Python 3.12" in image.splitlines()[0] and "x86_64" in image.splitlines()[0]
    assert "local disk" not in image
    locked = locked_versions(image)
    for name, version in (("holoscan-cu13", "4.2.0"), ("monai-deploy-app-sdk", "4.0.0"), ("holoscan-cli", "4.2.0"),
                          ("torch", "2.13.0"), ("python-json-logger", "4.2.0")):
        assert locked.get(name) == version, name
    ours = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group(0)).lower()
            for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and line[0].isalnum()}
    assert ours <= set(locked), sorted(ours - set(locked))
    entries = [block for block in re.split(r"\n(?=[a-z0-9])", image.split("\n", 4)[-1]) if block.strip()]
    assert len(entries) == len(locked) and all("--hash=sha256:" in block for block in entries)  # pip --require-hashes
    dockerfile = (context / "Dockerfile").read_text()
    assert "ENV PYTHON_VERSION=3.12." in dockerfile  # the interpreter the lock is resolved for


# The only package whose version differs between the image and the tested venv, and why: PyPI's CUDA
# torch 2.13.0 pins its Triton exactly; the venv's CPU torch needs none, and the tests' Triton
# interpreter (TRITON_INTERPRET=1) runs requirements-dev.txt's newer one.
LOCK_DIVERGENCES = {"triton"}


def test_tested_venv_is_consistent_with_the_lock() -> None:
    import importlib.metadata

    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version.split("+", 1)[0]
                 for d in importlib.metadata.distributions()}
    locked = locked_versions(LOCK.read_text())
    common = set(locked) & set(installed)
    assert len(common) >= 80  # the image and the venv hold most packages in common
    differ = {name: (locked[name], installed[name]) for name in common if locked[name] != installed[name]}
    assert set(differ) <= LOCK_DIVERGENCES, differ


def test_a_lock_out_of_date_with_requirements_stops_the_build(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text((REPO / "requirements.txt").read_text().replace("pydicom==3.0.2", "pydicom==3.0.1")
                            + "dicomweb-client==0.60.0\n")
    result = build_map("--tag", IMAGE, "--models", str(THRESHOLD_MODEL), "--out", str(tmp_path / "out"),
                       "--requirements", str(requirements), "--context-only")
    assert result.returncode == 1
    assert "requirements-image.lock is out of date" in result.stderr
    assert "dicomweb-client" in result.stderr and "pydicom (3.0.1 in requirements.txt, 3.0.2 locked)" in result.stderr


def test_dockerfile_installs_pins_copies_app_and_model_and_keeps_exit_status(context: Path) -> None:
    lines = dockerfile_lines(context)
    assert "FROM nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS base" in lines  # from packaging/artifacts.json
    assert 'LABEL org.nvidia.holoscan="4.2.0"' in lines
    assert "COPY ./pip/requirements.txt /tmp/requirements.txt" in lines
    assert "RUN pip install --no-cache-dir --user -r /tmp/requirements.txt" in lines
    assert "RUN pip install monai-deploy-app-sdk==4.0.0" in lines
    assert "COPY ./models  /opt/holoscan/models" in lines
    assert "COPY ./app /opt/holoscan/app" in lines
    assert "ENV HOLOSCAN_APPLICATION=/opt/holoscan/app" in lines
    assert "ENV HOLOSCAN_MODEL_PATH=/opt/holoscan/models" in lines
    assert "ENV HOLOSCAN_INPUT_PATH=/var/holoscan/input" in lines
    assert "EXPOSE 11112 8080" in lines
    entrypoints = [line for line in lines if line.startswith("ENTRYPOINT")]
    assert entrypoints[-1] == 'ENTRYPOINT ["/var/holoscan/segmamba-entry"]'
    assert "COPY ./segmamba-entry /var/holoscan/segmamba-entry" in lines
    assert "ENV PYTHONUSERBASE=/home/${UNAME}/.local" in lines


def test_dockerfile_gives_triton_a_compiler_and_any_uid_its_folders(context: Path) -> None:
    text = (context / "Dockerfile").read_text()
    additions = text[text.index("segmamba-node additions"):]
    assert re.search(r"apt-get install [^\n]*gcc libc6-dev \\\n\s+python3-dev=\$\{PYTHON_VERSION\}", additions)
    assert "libgl1 libglib2.0-0" in additions, "OpenCV (RTSTRUCT output) needs libGL and libglib in the image"
    assert "libjemalloc2" in additions, "the network's processes preload jemalloc (app/allocator.py)"
    folders = ("/var/holoscan/input", "/var/holoscan/output", "/var/holoscan/spool", "/var/holoscan/logs")
    mkdir = next(line for line in additions.splitlines() if "mkdir -p" in line)
    assert all(folder in mkdir for folder in folders)
    assert "chown -R ${UID}:0" in additions and "chmod -R u+rwX,g+rwX,o+rX" in additions  # gid 0, group-writable
    assert "chmod 2775 /var/holoscan" in additions
    lines = dockerfile_lines(context)
    assert [line for line in lines if line.startswith("USER")][-1] == "USER ${UID}"  # numeric: runAsNonRoot checks it
    assert "ENV SEGMAMBA_SPOOL=/var/holoscan/spool" in lines


def test_dockerignore_keeps_every_file_the_image_needs(context: Path) -> None:
    """The packager's .dockerignore must not silently drop part of the application or model."""
    patterns = [line.strip().removeprefix("**/").rstrip("/") for line in (context / ".dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    dropped = [str(path.relative_to(context)) for folder in ("app", "models", "pip", "map")
               for path in (context / folder).rglob("*") if path.is_file()
               if any(fnmatch(part, pattern) for part in path.relative_to(context).parts for pattern in patterns)]
    assert dropped == []


def test_build_script_tags_the_image_with_both_names(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = built
    script = (out / "build-image.sh").read_text()
    command = script.strip().splitlines()[-1]
    assert command.startswith("docker build --pull --platform linux/amd64 ")
    assert f"--tag {PACKAGER_IMAGE} --tag {IMAGE}" in command
    assert "--build-arg UID=1000" in command and "--build-arg GPU_TYPE=dgpu" in command
    assert command.endswith("--file context/Dockerfile context")


def test_context_only_succeeds_and_manifest_traps_are_refused(tmp_path: Path) -> None:
    result = build_map("--tag", IMAGE, "--models", str(THRESHOLD_MODEL), "--out", str(tmp_path / "a"),
                       "--context-only")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "a" / "context" / "Dockerfile").is_file()

    camel = yaml.safe_load((REPO / "app.yaml").read_text())
    application = camel["application"]
    application["inputFormats"] = application.pop("input-formats")
    (tmp_path / "camel.yaml").write_text(yaml.safe_dump(camel))
    result = build_map("--tag", IMAGE, "--models", str(THRESHOLD_MODEL), "--out", str(tmp_path / "b"),
                       "--config", str(tmp_path / "camel.yaml"))
    assert result.returncode == 1
    assert "inputFormats (the packager reads input-formats)" in result.stderr

    (tmp_path / "empty").mkdir()
    result = build_map("--tag", IMAGE, "--models", str(tmp_path / "empty"), "--out", str(tmp_path / "c"))
    assert result.returncode == 1 and "no model in" in result.stderr

    precious = tmp_path / "mine" / "notes.txt"  # an --out that this script did not write is left alone
    precious.parent.mkdir()
    precious.write_text("keep")
    result = build_map("--tag", IMAGE, "--models", str(THRESHOLD_MODEL), "--out", str(precious.parent))
    assert result.returncode == 1 and "not written by this script" in result.stderr
    assert precious.read_text() == "keep"
    result = build_map("--tag", IMAGE, "--models", str(THRESHOLD_MODEL), "--out", str(tmp_path / "a"),
                       "--context-only")  # a second build into the same folder replaces the first
    assert result.returncode == 0, result.stderr


def test_packaging_folder_does_not_shadow_the_packaging_library() -> None:
    assert not (PACKAGING / "__init__.py").exists()
    result = subprocess.run([sys.executable, "-c", "import packaging.version, sys; print(packaging.__file__)"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert "site-packages" in result.stdout


# --- the staged application, run as the image runs it -----------------------------------------

def image_environment(context: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The image's HOLOSCAN_* variables, pointed at the context's application, model and config."""
    env = dict(os.environ, PATH=f"{PYTHON_BIN}{os.pathsep}{os.environ['PATH']}",
               HOLOSCAN_APPLICATION=str(context / "app"), HOLOSCAN_MODEL_PATH=str(context / "models"),
               HOLOSCAN_CONFIG_PATH=str(context / "app.config"), HOLOSCAN_WORKDIR=str(tmp_path),
               TMPDIR=str(tmp_path), SEGMAMBA_PROGRESS="false")
    env.update(extra)
    return env


def test_staged_application_segments_a_study_like_the_container(
    context: Path, study: Path, tmp_path: Path,
) -> None:
    """``python3 /opt/holoscan/app`` with the MAP's HOLOSCAN_* variables."""
    out = tmp_path / "output"
    env = image_environment(context, tmp_path, HOLOSCAN_INPUT_PATH=str(study), HOLOSCAN_OUTPUT_PATH=str(out))
    result = subprocess.run(["python3", str(context / "app")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "segmentation.dcm").is_file()
    assert json.loads(result.stdout)["segmentation"] == str(out / "segmentation.dcm")


def test_mercure_runs_the_image_entry_point_on_its_folders(context: Path, study: Path, tmp_path: Path) -> None:
    """mercure: study in /tmp/data with task.json and *.tags beside it, results to /tmp/output."""
    data, output = tmp_path / "data", tmp_path / "output"
    shutil.copytree(study, data)
    (data / "task.json").write_text(json.dumps({"id": "task-1", "info": {"action": "both"}}))
    first = sorted(data.iterdir())[0]
    (data / f"{first.name}.tags").write_text("{}")
    output.mkdir()
    env = image_environment(context, tmp_path, MERCURE_IN_DIR=str(data), MERCURE_OUT_DIR=str(output),
                            HOLOSCAN_INPUT_PATH="/var/holoscan/input", HOLOSCAN_OUTPUT_PATH="/var/holoscan/output")
    result = subprocess.run(["sh", str(context / "segmamba-entry")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "segmentation.dcm").is_file()
    assert "without: task.json *.tags *.dcm.json" in result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_mode_answers_healthz_and_stops_on_sigterm(context: Path, tmp_path: Path) -> None:
    """The Kubernetes contract: SEGMAMBA_MODE=serve, /healthz on the HTTP port, SIGTERM reaches the node."""
    http_port = free_port()
    env = image_environment(context, tmp_path, SEGMAMBA_MODE="serve", SEGMAMBA_PORT=str(free_port()),
                            SEGMAMBA_HTTP_PORT=str(http_port), SEGMAMBA_SPOOL=str(tmp_path / "spool"))
    log = (tmp_path / "node.log").open("w")
    node = subprocess.Popen(["sh", str(context / "segmamba-entry")], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        health: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and node.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        assert health.get("status") == "ok", (tmp_path / "node.log").read_text()[-3000:]
        node.send_signal(signal.SIGTERM)  # to the shell's pid: exec made it the application
        assert node.wait(timeout=60) == 0  # a graceful stop, not a shell killed by the signal (-15)
        with pytest.raises(OSError):  # and the application is gone with it
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the node's process group
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)
        log.close()
    assert (tmp_path / "spool").is_dir()


def test_entry_point_returns_the_application_exit_status(context: Path, tmp_path: Path) -> None:
    env = image_environment(context, tmp_path, SEGMAMBA_MODE="sideways")
    result = subprocess.run(["sh", str(context / "segmamba-entry")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "SEGMAMBA_MODE must be one of batch, serve" in result.stderr


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    """A stand-in application that records its arguments, environment and input files."""
    folder = tmp_path / "recorder"
    folder.mkdir()
    (folder / "__main__.py").write_text(
        "import json, os, sys\nfrom pathlib import Path\n"
        "source = Path(os.environ.get('HOLOSCAN_INPUT_PATH', '/nonexistent'))\n"
        "files = sorted(str(p.relative_to(source)) for p in source.rglob('*') if p.is_file()) "
        "if source.is_dir() else None\n"
        "keys = ('HOLOSCAN_INPUT_PATH', 'HOLOSCAN_OUTPUT_PATH', 'HOLOSCAN_WORKDIR', 'HOME')\n"
        "record = {'argv': sys.argv[1:], 'env': {k: os.environ.get(k) for k in keys}, 'files': files,\n"
        "          'targets': sorted({str(p.resolve().parent) for p in source.rglob('*') if p.is_file()})\n"
        "          if source.is_dir() else None, 'cwd': os.getcwd()}\n"
        "Path(os.environ['RECORD']).write_text(json.dumps(record))\n"
        "sys.exit(int(os.environ.get('EXIT_WITH', '0')))\n"
    )
    return folder


def run_entry(context: Path, recorder: Path, tmp_path: Path, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    record = tmp_path / "record.json"
    environ = dict(os.environ, PATH=f"{PYTHON_BIN}{os.pathsep}{os.environ['PATH']}",
                   HOLOSCAN_APPLICATION=str(recorder), RECORD=str(record), TMPDIR=str(tmp_path))
    environ.pop("SEGMAMBA_MODE", None)
    environ.update(env)
    result = subprocess.run(["sh", str(context / "segmamba-entry"), *args], env=environ, capture_output=True,
                            text=True, timeout=60, check=False)
    return result.returncode, json.loads(record.read_text())


def test_entry_point_passes_arguments_and_status_unchanged(context: Path, recorder: Path, tmp_path: Path) -> None:
    args = ("--series-rules", "/rules folder/my rules.json", "--reference-role", "t1c")
    code, record = run_entry(context, recorder, tmp_path, *args, EXIT_WITH="7")
    assert code == 7  # the packager's /var/holoscan/tools would return 0 here
    assert record["argv"] == list(args)  # and split the path with spaces (eval)


def test_entry_point_leaves_engine_side_files_out_of_the_study(
    context: Path, recorder: Path, tmp_path: Path,
) -> None:
    """MONAI Deploy Informatics Gateway stores <instance>.dcm.json beside each instance."""
    payload = tmp_path / "payload"
    series = payload / "dcm" / "1.2.3" / "1.2.3.4"
    series.mkdir(parents=True)
    for name in ("a.dcm", "a.dcm.json", "b.dcm", "b.dcm.json"):
        (series / name).write_bytes(b"x")
    code, record = run_entry(context, recorder, tmp_path, HOLOSCAN_INPUT_PATH=str(payload))
    assert code == 0
    assert record["files"] == ["dcm/1.2.3/1.2.3.4/a.dcm", "dcm/1.2.3/1.2.3.4/b.dcm"]
    assert record["targets"] == [str(series.resolve())]  # links to the originals, nothing copied
    assert record["env"]["HOLOSCAN_INPUT_PATH"] != str(payload)

    code, record = run_entry(context, recorder, tmp_path, HOLOSCAN_INPUT_PATH=str(payload), SEGMAMBA_INPUT_IGNORE="")
    assert record["env"]["HOLOSCAN_INPUT_PATH"] == str(payload) and len(record["files"]) == 4

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.dcm").write_bytes(b"x")
    code, record = run_entry(context, recorder, tmp_path, HOLOSCAN_INPUT_PATH=str(plain))
    assert record["env"]["HOLOSCAN_INPUT_PATH"] == str(plain)


def test_entry_point_maps_mercure_folders_and_a_homeless_user(
    context: Path, recorder: Path, tmp_path: Path,
) -> None:
    data, output = tmp_path / "data", tmp_path / "output"
    data.mkdir()
    output.mkdir()
    for name in ("s#1.dcm", "s#1.tags", "s#2.dcm", "s#2.tags", "task.json"):
        (data / name).write_bytes(b"x")
    code, record = run_entry(context, recorder, tmp_path, MERCURE_IN_DIR=str(data), MERCURE_OUT_DIR=str(output),
                             HOLOSCAN_INPUT_PATH="/var/holoscan/input", HOME="/nonexistent/home")
    assert code == 0
    assert record["files"] == ["s#1.dcm", "s#2.dcm"]
    assert record["env"]["HOLOSCAN_OUTPUT_PATH"] == str(output)
    assert record["env"]["HOLOSCAN_WORKDIR"] == record["cwd"] == str(tmp_path)
    assert record["env"]["HOME"] == str(tmp_path)

    code, record = run_entry(context, recorder, tmp_path, HOLOSCAN_WORKDIR="/nonexistent/work")
    assert record["env"]["HOLOSCAN_WORKDIR"] == record["cwd"] == str(tmp_path)  # docker run --user


def test_serve_mode_reaches_the_application_untouched(context: Path, recorder: Path, tmp_path: Path) -> None:
    """In serve mode the entry point neither filters input nor maps mercure folders."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "task.json").write_text("{}")
    for args, env in ((("serve",), {}), ((), {"SEGMAMBA_MODE": "serve"})):
        code, record = run_entry(context, recorder, tmp_path, *args, HOLOSCAN_INPUT_PATH=str(data), **env)
        assert code == 0
        assert record["argv"] == list(args)
        assert record["env"]["HOLOSCAN_INPUT_PATH"] == str(data)


def test_main_selects_the_mode_from_argument_or_environment(
    context: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = runpy.run_path(str(context / "app" / "__main__.py"), run_name="staged_main")
    arguments = entry["arguments"]
    assert arguments(["-i", "in"], {}) == ["-i", "in"]
    assert arguments(["-i", "in"], {"SEGMAMBA_MODE": "batch"}) == ["-i", "in"]
    assert arguments(["--port", "11112"], {"SEGMAMBA_MODE": "serve"}) == ["serve", "--port", "11112"]
    assert arguments(["serve"], {"SEGMAMBA_MODE": "Serve"}) == ["serve"]
    assert arguments(["serve"], {}) == ["serve"]
    with pytest.raises(ValueError, match="SEGMAMBA_MODE"):
        arguments([], {"SEGMAMBA_MODE": "daemon"})

    calls: list[list[str]] = []
    fake_cli = types.ModuleType("app.cli")

    def fake_main(argv: list[str], program: bool) -> int:
        calls.append(argv)
        return 0 if program else 1  # the MAP entry is the process's program: it may restart under jemalloc

    fake_cli.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "app.cli", fake_cli)
    monkeypatch.setenv("SEGMAMBA_MODE", "serve")
    monkeypatch.setattr(sys, "argv", ["/opt/holoscan/app", "--log-level", "DEBUG"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(context / "app" / "__main__.py"), run_name="__main__")
    assert stop.value.code == 0
    assert calls == [["serve", "--log-level", "DEBUG"]]


# --- deployment descriptors ------------------------------------------------------------------

def descriptors() -> dict[str, list[Any]]:
    """Every JSON/YAML file under packaging/deploy, parsed (YAML: all documents)."""
    parsed: dict[str, list[Any]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix == ".json":
            parsed[str(path.relative_to(DEPLOY))] = [json.loads(path.read_text())]
        elif path.suffix in (".yaml", ".yml"):
            parsed[str(path.relative_to(DEPLOY))] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return parsed


def kinds(name: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for document in descriptors()[name]:
        found.setdefault(document["kind"], []).append(document)
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def test_every_descriptor_parses_and_names_our_image() -> None:
    parsed = descriptors()
    assert set(parsed) == {"kubernetes/segmamba-node.yaml", "mercure/mercure-config.json",
                           "monai-deploy/argo-workflow-template.yaml", "monai-deploy/informatics-gateway.json",
                           "monai-deploy/workflow.json"}
    text = "\n".join(path.read_text() for path in DEPLOY.rglob("*") if path.is_file())
    images = re.findall(r"(?:image|docker_tag)\"?:\s*\"?([\w./:-]+)", text)
    assert len(images) == 3
    assert all(image.rsplit("/", 1)[-1] == IMAGE for image in images), images


def test_segmamba_variables_in_descriptors_are_real_settings() -> None:
    text = "\n".join(path.read_text() for path in DEPLOY.rglob("*") if path.is_file())
    used = set(re.findall(r"\bSEGMAMBA_[A-Z_]+", text))
    known = {"SEGMAMBA_" + f.name.upper() for f in fields(Settings)} | ENTRY_VARIABLES
    assert used and used <= known, sorted(used - known)


def test_workflow_manager_workflow_routes_mr_brain_to_the_map_and_exports_the_seg() -> None:
    workflow = descriptors()["monai-deploy/workflow.json"][0]
    ig = descriptors()["monai-deploy/informatics-gateway.json"][0]
    template = kinds("monai-deploy/argo-workflow-template.yaml")["WorkflowTemplate"][0]
    assert len(workflow["name"]) <= 15 and workflow["version"] == VERSION
    tasks = {task["id"]: task for task in workflow["tasks"]}
    assert len(tasks) == len(workflow["tasks"])
    for task in workflow["tasks"]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,50}", task["id"])
        for destination in task.get("task_destinations", []):
            assert destination["name"] in tasks
    router, argo, export = workflow["tasks"]
    assert router["type"] == "router"
    conditions = " ".join(router["task_destinations"][0]["conditions"])
    assert "('0008','0060') }} == 'MR'" in conditions and "('0018','0015')" in conditions
    assert router["task_destinations"][0]["name"] == argo["id"]

    assert argo["type"] == "argo"
    assert set(argo["args"]) <= ARGO_TASK_ARGS, sorted(set(argo["args"]) - ARGO_TASK_ARGS)
    assert "memory_gb" not in argo["args"]
    assert re.fullmatch(QUANTITY, argo["args"]["memory"]) and argo["args"]["memory"] == APP_YAML["resources"]["memory"]
    assert re.fullmatch(QUANTITY, argo["args"]["cpu"]) and argo["args"]["gpu_required"] in ("true", "false")
    assert argo["args"]["workflow_template_name"] == template["metadata"]["name"]
    assert argo["args"]["namespace"] == template["metadata"]["namespace"]
    assert argo["artifacts"]["input"] == [{"name": "input-dicom", "value": "{{ context.input.dicom }}",
                                           "mandatory": True}]
    step = next(t for t in template["spec"]["templates"] if t["name"] == template["spec"]["entrypoint"])
    assert {a["name"] for a in argo["artifacts"]["input"]} <= {a["name"] for a in step["inputs"]["artifacts"]}
    assert {a["name"] for a in argo["artifacts"]["output"]} <= {a["name"] for a in step["outputs"]["artifacts"]}

    assert export["type"] == "export"
    seg = export["artifacts"]["input"][0]["value"]
    assert seg == f"{{{{ context.executions.{argo['id']}.artifacts.seg-dicom }}}}"
    assert [d["name"] for d in export["export_destinations"]] == workflow["informatics_gateway"]["export_destinations"]
    assert ig["ae"]["aeTitle"] == workflow["informatics_gateway"]["ae_title"]
    assert ig["destination"]["name"] in workflow["informatics_gateway"]["export_destinations"]
    assert ig["ae"]["grouping"] == "0020000D"  # one workflow per study


def test_argo_template_maps_artifacts_to_the_map_paths() -> None:
    template = kinds("monai-deploy/argo-workflow-template.yaml")["WorkflowTemplate"][0]
    step = template["spec"]["templates"][0]
    container = step["container"]
    env = env_of(container)
    inputs = {a["name"]: a for a in step["inputs"]["artifacts"]}
    outputs = {a["name"]: a for a in step["outputs"]["artifacts"]}
    assert inputs["input-dicom"]["path"] == env["HOLOSCAN_INPUT_PATH"]
    assert outputs["seg-dicom"]["path"] == f"{env['HOLOSCAN_OUTPUT_PATH']}/segmentation.dcm"
    assert outputs["report"]["path"] == f"{env['HOLOSCAN_OUTPUT_PATH']}/report.json"
    assert all(a["archive"] == {"none": {}} for a in outputs.values())  # raw DICOM in MinIO, not a tarball
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[env["HOLOSCAN_OUTPUT_PATH"]]]  # writable by the image's user
    assert container["command"] == [ENTRY_POINT] and "args" not in container  # app.json's command: batch mode
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(APP_YAML["resources"]["gpu"])
    assert container["resources"]["limits"]["memory"] == APP_YAML["resources"]["memory"]


def test_mercure_module_rule_and_target_fit_together() -> None:
    config = descriptors()["mercure/mercure-config.json"][0]
    module = config["modules"]["segmamba"]
    assert module["docker_tag"] == IMAGE
    for key in ("environment", "docker_arguments"):  # mercure ignores text that is not JSON, silently
        assert isinstance(module[key], str) and isinstance(json.loads(module[key]), dict)
    arguments = json.loads(module["docker_arguments"])
    assert arguments == {"runtime": "nvidia"}  # mercure's own GPU switch writes exactly this
    assert not MERCURE_UNSAFE & set(arguments)  # refused unless unsafe arguments are allowed
    assert module["requires_root"] is False
    assert not any(k.startswith("HOLOSCAN_") for k in json.loads(module["environment"]))
    rule = config["rules"]["segmamba_brain_mr"]
    assert rule["processing_module"] == "segmamba" and rule["target"] in config["targets"]
    assert rule["action"] == "both" and rule["action_trigger"] == "study"
    assert "@Modality@ == 'MR'" in rule["rule"]
    assert config["targets"][rule["target"]]["target_type"] == "dicom"


def test_kubernetes_serve_mode_has_gpu_spool_probes_and_dicom_service() -> None:
    found = kinds("kubernetes/segmamba-node.yaml")
    node = found["StatefulSet"][0]
    spec = node["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = env_of(container)
    settings = APP_YAML["settings"]
    assert env["SEGMAMBA_MODE"] == "serve" or container.get("args", [None])[0] == "serve"
    assert spec["replicas"] == 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["dicom"] == int(env.get("SEGMAMBA_PORT", settings["port"]))
    assert ports["http"] == int(env.get("SEGMAMBA_HTTP_PORT", settings["http_port"]))
    assert env["SEGMAMBA_BIND_ADDRESS"] == env["SEGMAMBA_HTTP_BIND"] == "0.0.0.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["memory"] == APP_YAML["resources"]["memory"]
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
    assert mounts["spool"] == env["SEGMAMBA_SPOOL"]  # the journal lives in the spool
    assert claims["spool"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 1000
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    services = {s["metadata"]["name"]: s for s in found["Service"]}
    dicom = services["segmamba-node-dicom"]["spec"]
    assert dicom["selector"].items() <= labels.items()
    assert dicom["ports"][0]["targetPort"] == "dicom" and dicom["ports"][0]["port"] == ports["dicom"]
    assert services[spec["serviceName"]]["spec"]["clusterIP"] == "None"


def test_kubernetes_manifests_pass_the_schema_validator_strictly() -> None:
    """kubernetes-validate (the API's OpenAPI schemas, shipped in the wheel, offline), strict mode:
    unknown fields (a typo) are errors too."""
    import kubernetes_validate

    documents = descriptors()["kubernetes/segmamba-node.yaml"]
    for document in documents:
        kubernetes_validate.validate(document, "1.37.0", strict=True)
    broken = json.loads(json.dumps(documents[2]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


def test_kubernetes_node_is_locked_down_and_takes_its_secrets() -> None:
    found = kinds("kubernetes/segmamba-node.yaml")
    pod = found["StatefulSet"][0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/holoscan/spool", "/tmp"}  # everything else is the read-only image
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = env_of(container)
    assert env["TMPDIR"] == mounts["tmp"] and "emptyDir" in volumes["tmp"]
    assert volumes["tls"]["secret"]["secretName"] == "segmamba-node-tls"
    assert env["SEGMAMBA_TLS_CERT"] == f"{mounts['tls']}/tls.crt"
    assert env["SEGMAMBA_TLS_KEY"] == f"{mounts['tls']}/tls.key"
    token = next(item for item in container["env"] if item["name"] == "SEGMAMBA_HTTP_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "segmamba-node-web", "key": "token"}
    assert env["SEGMAMBA_LOG_FORMAT"] == "json"
    policy = found["NetworkPolicy"][0]["spec"]
    labels = found["StatefulSet"][0]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    dicom_rule, web_rule = policy["ingress"]
    assert dicom_rule["ports"] == [{"port": "dicom", "protocol": "TCP"}] and "from" not in dicom_rule
    assert web_rule["ports"] == [{"port": "http", "protocol": "TCP"}] and web_rule["from"]  # not from everywhere
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    destination_ports = {int(d.rsplit(":", 1)[1]) for d in env["SEGMAMBA_DESTINATIONS"].split(",")}
    assert {53} | destination_ports <= egress_ports


def test_argo_template_passes_the_argo_models_round_trip() -> None:
    """hera's Argo Workflows models (generated from Argo's OpenAPI schema): the template validates and
    survives a round trip unchanged, so no field is unknown to Argo."""
    from hera.workflows.models import WorkflowTemplate

    document = kinds("monai-deploy/argo-workflow-template.yaml")["WorkflowTemplate"][0]
    model = WorkflowTemplate.model_validate(document)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == document
    typo = json.loads(json.dumps(document))
    typo["spec"]["templates"][0]["container"]["comand"] = [ENTRY_POINT]
    dumped = WorkflowTemplate.model_validate(typo).model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dumped != typo  # the check would catch a misspelt field
