#!/usr/bin/env python3
"""Build the SegMamba node's MONAI Application Package (MAP) with ``monai-deploy package``.

From the repository root, with the project's virtual environment::

    .venv/bin/python packaging/build_map.py --tag segmamba-node:0.1.0 [--platform x86_64]
        [--models models] [--out build/map] [--context-only] [--torch-index URL]

``packaging/`` is a folder of scripts, not an importable package: a ``packaging/__init__.py``
would shadow the PyPI ``packaging`` library (pip, setuptools and holoscan-cli import it) for
anything run from the repository root, so ``python -m packaging.build_map`` cannot work.

Steps:
1. check the pinned toolchain (holoscan-cu13 and holoscan-cli 4.2.0, monai-deploy-app-sdk
   4.0.0) and app.yaml's manifest keys (``input-formats``/``output-formats``; the camel-case
   keys of older examples are silently ignored by the packager);
2. stage the application in OUT/staging/app (app/, operators/, segmamba/, ``__main__.py``,
   app.yaml, and as requirements.txt the lock packaging/requirements-image.lock, checked against
   requirements.txt and its SDK pins) and the one model folder in OUT/staging/models/NAME;
3. run ``monai-deploy package`` offline (``--source packaging/artifacts.json``) with a stand-in
   ``docker`` first on PATH (capture_docker.py) that copies the generated build context to
   OUT/context instead of building it;
4. complete the context: an entry point that keeps the application's exit status
   (segmamba-entry.sh, also app.json's command, with serve-mode probes), gcc and Python.h for
   Triton, folders and packages usable by any user id in group 0, the DICOM and HTTP ports;
   write OUT/build-image.sh (the ``docker build`` command) and OUT/build-info.json;
5. with a Docker engine (and without --context-only), build the image, tagged with the
   packager's name (NAME-x64-workstation-dgpu-linux-amd64:VERSION) and with --tag.

Exit status: 0 the image was built, or the context was written with --context-only;
3 the context was written but there is no Docker engine here to build the image (build it
elsewhere with OUT/build-image.sh); 1 an error; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PACKAGING = Path(__file__).resolve().parent
REPO = PACKAGING.parent
ARTIFACTS_MANIFEST = PACKAGING / "artifacts.json"
ENTRY_SCRIPT = PACKAGING / "segmamba-entry.sh"
MAIN_SOURCE = PACKAGING / "map_main.py"
CAPTURE_SCRIPT = PACKAGING / "capture_docker.py"
LOCK = PACKAGING / "requirements-image.lock"  # packaging/lock_image.py
IMAGE_PYTHON = "3.12"  # the packager's Ubuntu 24.04 python3 (3.12.3), which the lock is resolved for
APPLICATION_PACKAGES = ("app", "operators", "segmamba")
MODEL_CARD = "metadata.json"
INFO_NAME = "build-info.json"

# The toolchain this packaging is written and tested against (holoscan-cli >= 4.3 has no packager).
PINS = {"holoscan-cu13": "4.2.0", "holoscan-cli": "4.2.0", "monai-deploy-app-sdk": "4.0.0"}
MANIFEST_KEYS = ("title", "version", "input-formats", "output-formats")
IGNORED_MANIFEST_KEYS = {"inputFormats": "input-formats", "outputFormats": "output-formats"}
RESOURCE_KEYS = ("cpu", "memory", "gpu", "gpuMemory")
DICOM_PORT, HTTP_PORT = 11112, 8080
ENTRY_POINT = "/var/holoscan/segmamba-entry"  # the image's ENTRYPOINT, and app.json's command


def http_probe(path: str, period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
    """A MAP manifest probe (Holoscan/MAP application manifest format) on the status server."""
    return {"type": "http-get", "path": path, "port": HTTP_PORT, "initialDelaySeconds": initial_delay,
            "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}


# Serve mode only (a batch run exits when its study is done and has no HTTP server).
LIVENESS = http_probe("/healthz", 30, 4, initial_delay=10)
READINESS = http_probe("/readyz", 10, 3, initial_delay=10)

EXIT_OK, EXIT_ERROR, EXIT_NO_ENGINE = 0, 1, 3
WRITABLE = ("/var/holoscan/input", "/var/holoscan/output", "/var/holoscan/spool",
            "/var/holoscan/logs")
DOCKERFILE_ADDITIONS = """
# ---- segmamba-node additions (packaging/build_map.py) ----
USER root
# Triton (in PyPI's CUDA torch) compiles a C launcher at its first GPU use: it needs gcc and Python.h.
# (Without them the 'auto' scan backend falls back to the chunked one, with one warning.)
# OpenCV (rt-utils, for the optional RT Structure Set) loads libGL and libglib at import.
# jemalloc: the allocator the network's processes preload (app/allocator.py; ~1.5x faster CPU windows).
RUN apt-get update \\
    && apt-get install -y --no-install-recommends --no-install-suggests gcc libc6-dev \\
        python3-dev=${{PYTHON_VERSION}} libgl1 libglib2.0-0 libjemalloc2 \\
    && rm -rf /var/lib/apt/lists/*
# Entry point that runs the application with exec: its exit status and signals are kept
# (the packager's /var/holoscan/tools always exits 0).
COPY ./segmamba-entry /var/holoscan/segmamba-entry
# Any uid: the working, spool, output and log folders belong to group 0 and are group-writable
# (OpenShift runs an arbitrary uid in group 0; a fresh volume mounted on them copies this), and
# packages installed with pip --user stay readable (mercure runs modules with its own uid).
RUN mkdir -p {writable} \\
    && chown ${{UID}}:0 /var/holoscan && chmod 2775 /var/holoscan \\
    && chown -R ${{UID}}:0 {writable} \\
    && chmod -R u+rwX,g+rwX,o+rX {writable} \\
    && chmod g+s {writable} \\
    && chmod 0755 /var/holoscan/segmamba-entry /home/${{UNAME}}
USER ${{UID}}
ENV PYTHONUSERBASE=/home/${{UNAME}}/.local
ENV SEGMAMBA_SPOOL=/var/holoscan/spool
EXPOSE {dicom_port} {http_port}
ENTRYPOINT ["{entry_point}"]
"""


class BuildError(RuntimeError):
    """A reason to stop, stated for the person running the build."""


@dataclass(frozen=True)
class Layout:
    """Folders and files under --out."""

    out: Path

    @property
    def staging(self) -> Path:
        return self.out / "staging"

    @property
    def app(self) -> Path:
        return self.staging / "app"

    @property
    def models(self) -> Path:
        return self.staging / "models"

    @property
    def context(self) -> Path:
        return self.out / "context"

    @property
    def record(self) -> Path:
        return self.out / "buildx-arguments.json"

    @property
    def log(self) -> Path:
        return self.out / "package.log"

    @property
    def build_script(self) -> Path:
        return self.out / "build-image.sh"

    @property
    def info(self) -> Path:
        return self.out / INFO_NAME

    @property
    def marker(self) -> Path:
        return self.out / ".build_map"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python packaging/build_map.py",
        description="Build the MONAI Application Package (MAP) image of the SegMamba node with "
        "'monai-deploy package', offline. Without a Docker engine it stops after writing the complete "
        "build context (exit status 3).",
    )
    parser.add_argument("--tag", required=True, help="image name and tag, e.g. segmamba-node:0.1.0")
    parser.add_argument("--platform", default="x86_64", choices=("x86_64", "sbsa"),
                        help="target platform (default x86_64; sbsa = Arm64 servers)")
    parser.add_argument("--models", type=Path, default=REPO / "models",
                        help="model folder (holding metadata.json) or a folder with exactly one (default: models/)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "map", help="output folder (default build/map)")
    parser.add_argument("--config", type=Path, default=REPO / "app.yaml", help="application manifest and settings")
    parser.add_argument("--requirements", type=Path, default=REPO / "requirements.txt")
    parser.add_argument("--torch-index", metavar="URL",
                        help="extra pip index for torch in the image, e.g. https://download.pytorch.org/whl/cu130 "
                        "(default: PyPI, whose Linux torch wheels are CUDA builds)")
    parser.add_argument("--uid", type=int, default=1000, help="user id of the image's user (default 1000)")
    parser.add_argument("--gid", type=int, default=1000, help="group id of the image's user (default 1000)")
    parser.add_argument("--context-only", action="store_true",
                        help="write the build context and stop, even where a Docker engine exists")
    return parser.parse_args(argv)


def check_toolchain() -> None:
    """The packager, the SDK and Holoscan must be the pinned versions."""
    wrong = []
    for name, version in PINS.items():
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = "not installed"
        if found != version:
            wrong.append(f"{name} {found} (need {version})")
    if wrong:
        pins = " ".join(f"{name}=={version}" for name, version in PINS.items())
        raise BuildError(f"wrong packaging toolchain: {', '.join(wrong)}; install with: pip install {pins}")
    if not monai_deploy_command().is_file():
        raise BuildError(f"the 'monai-deploy' command is missing beside {sys.executable}")


def monai_deploy_command() -> Path:
    return Path(sys.executable).parent / "monai-deploy"


def read_manifest(config: Path) -> dict[str, Any]:
    """app.yaml's ``application`` and ``resources``, checked for the keys the packager reads."""
    document = yaml.safe_load(config.read_text()) or {}
    application = document.get("application") or {}
    resources = document.get("resources") or {}
    ignored = [f"{old} (the packager reads {new})" for old, new in IGNORED_MANIFEST_KEYS.items() if old in application]
    if ignored:
        raise BuildError(f"{config}: application keys ignored by the packager: {', '.join(ignored)}")
    missing = [f"application.{key}" for key in MANIFEST_KEYS if not application.get(key)]
    missing += [f"resources.{key}" for key in RESOURCE_KEYS if resources.get(key) in (None, "")]
    if missing:
        raise BuildError(f"{config}: missing {', '.join(missing)}")
    return {"application": application, "resources": resources}


def find_model(path: Path) -> Path:
    """The model folder: ``path`` itself when it holds metadata.json, else its one model sub-folder."""
    if (path / MODEL_CARD).is_file():
        return path
    candidates = sorted(card.parent for card in path.glob(f"*/{MODEL_CARD}")) if path.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BuildError(f"no model in {path} (a folder with {MODEL_CARD}); pass --models, e.g. "
                         "--models tests/models/threshold for the deterministic test model")
    raise BuildError(f"{path} holds {len(candidates)} models ({', '.join(c.name for c in candidates)}); "
                     "pass --models with the one to package")


def prepare_out(layout: Layout) -> None:
    """Empty --out, refusing a non-empty folder that an earlier build did not make."""
    out = layout.out
    if out.exists() and any(out.iterdir()) and not layout.marker.is_file():
        raise BuildError(f"{out} is not empty and was not written by this script; choose another --out")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    layout.marker.write_text("written by packaging/build_map.py; emptied by each build\n")


def requirement_name(line: str) -> str | None:
    """The normalised project name of a requirement line, or None for comments and options."""
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else None


def requirement_pins(text: str) -> dict[str, str]:
    """name -> version of the ``name==version`` lines of a requirements (or lock) text."""
    pins = {}
    for line in text.splitlines():
        name = requirement_name(line)
        match = re.match(r"[A-Za-z0-9._-]+\s*==\s*([^\s;#\\]+)", line.split("#", 1)[0].strip())
        if name and match:
            pins[name] = match.group(1)
    return pins


def check_pins(source: Path) -> None:
    """requirements.txt must pin the packaging toolchain (the image's SDK is the one tested)."""
    lines = source.read_text().splitlines()
    pinned = {requirement_name(line): line.split("#", 1)[0].strip() for line in lines if requirement_name(line)}
    for name, version in PINS.items():
        line = pinned.get(name)
        if line is None or re.sub(r"\s", "", line).lower() != f"{name}=={version}":
            raise BuildError(f"{source} has '{line or f'no {name}'}'; the image needs {name}=={version} "
                             "(the packaging toolchain)")


def check_lock(source: Path, lock: Path) -> None:
    """The lock must hold every requirement, at the version requirements.txt pins."""
    if not lock.is_file():
        raise BuildError(f"no lock file {lock}; write it with: .venv/bin/python packaging/lock_image.py")
    locked = requirement_pins(lock.read_text())
    wanted = {requirement_name(line) for line in source.read_text().splitlines()} - {None}
    stale = sorted(name for name in wanted if name not in locked)
    stale += [f"{name} ({version} in {source.name}, {locked[name]} locked)"
              for name, version in requirement_pins(source.read_text()).items()
              if name in locked and locked[name] != version]
    if stale:
        raise BuildError(f"{lock.name} is out of date with {source.name}: {', '.join(stale)}; "
                         "regenerate it with: .venv/bin/python packaging/lock_image.py")


def staged_requirements(source: Path, torch_index: str | None, platform: str = "x86_64",
                        lock: Path = LOCK) -> str:
    """requirements.txt for the image: the lock file (x86_64, PyPI torch), else ours unlocked."""
    check_pins(source)
    if platform == "x86_64" and not torch_index:
        check_lock(source, lock)
        return lock.read_text()
    reason = f"--torch-index {torch_index}" if torch_index else f"--platform {platform}"
    print(f"WARNING {reason}: the lock ({lock.name}) is for x86_64 with PyPI's torch; the image's packages "
          "are resolved at build time (not reproducible)", file=sys.stderr)
    head = [f"# Requirements of the MAP image (packaging/build_map.py, {reason}): resolved at build time.",
            "# torch: PyPI's Linux torch wheels are CUDA builds that carry their CUDA libraries; the host needs",
            "# only the NVIDIA driver (>= 580 for CUDA 13) and the NVIDIA container toolkit."]
    if torch_index:
        head.append(f"--extra-index-url {torch_index}")
    body = [line for line in source.read_text().splitlines() if not line.lstrip().startswith("#")]
    return "\n".join([*head, "", *body]) + "\n"


def stage(layout: Layout, model: Path, config: Path, requirements: Path, torch_index: str | None,
          platform: str) -> None:
    """Write the application folder and the model folder that the packager takes."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")
    for name in APPLICATION_PACKAGES:
        shutil.copytree(REPO / name, layout.app / name, ignore=ignore)
    shutil.copyfile(MAIN_SOURCE, layout.app / "__main__.py")
    shutil.copyfile(config, layout.app / "app.yaml")
    (layout.app / "requirements.txt").write_text(staged_requirements(requirements, torch_index, platform))
    shutil.copytree(model, layout.models / model.name, ignore=ignore)


def stand_in_docker(layout: Layout) -> Path:
    """A folder whose ``docker`` runs capture_docker.py with this interpreter."""
    folder = layout.out / ".bin"
    folder.mkdir()
    script = folder / "docker"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(CAPTURE_SCRIPT))} \"$@\"\n")
    script.chmod(0o755)
    return folder


def run_packager(layout: Layout, args: argparse.Namespace) -> dict[str, Any]:
    """``monai-deploy package`` with the stand-in docker; returns the captured build arguments."""
    from holoscan_cli.common.constants import Constants

    temp = layout.out / ".tmp"  # same file system as the context: the capture hard-links
    temp.mkdir()
    env = dict(os.environ, PATH=f"{stand_in_docker(layout)}{os.pathsep}{os.environ.get('PATH', '')}",
               TMPDIR=str(temp), SEGMAMBA_CAPTURE_DIR=str(layout.context),
               SEGMAMBA_CAPTURE_RECORD=str(layout.record),
               SEGMAMBA_BUILDX_BUILDER=Constants.LOCAL_BUILDX_BUILDER_NAME)
    command = [
        str(monai_deploy_command()), "package", str(layout.app),
        "--config", str(args.config), "--platform", args.platform, "--tag", args.tag,
        "--models", str(layout.models), "--source", str(ARTIFACTS_MANIFEST),
        "--uid", str(args.uid), "--gid", str(args.gid), "--build-cache", str(layout.out / ".build-cache"),
    ]
    with layout.log.open("w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    shutil.rmtree(temp, ignore_errors=True)
    if not layout.record.is_file():
        tail = "\n".join(layout.log.read_text().splitlines()[-25:])
        raise BuildError(f"monai-deploy package failed before the image build (full log: {layout.log}):\n{tail}")
    return json.loads(layout.record.read_text())


def complete_app_manifest(path: Path) -> None:
    """app.json: the command the image really starts (our entry point, as the packager's JSON text) and
    the serve mode's probes."""
    manifest = json.loads(path.read_text())
    manifest["command"] = json.dumps([ENTRY_POINT])
    manifest["liveness"], manifest["readiness"] = LIVENESS, READINESS
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def complete_context(layout: Layout, record: dict[str, Any], user_tag: str) -> list[str]:
    """Add the entry point and Dockerfile lines; returns the ``docker build`` command line."""
    dockerfile = Path(record["dockerfile"])
    python = re.search(r"^ENV PYTHON_VERSION=(\S+)", dockerfile.read_text(), re.MULTILINE)
    if python is None or not python.group(1).startswith(f"{IMAGE_PYTHON}."):
        raise BuildError(f"the packager's Dockerfile installs Python {python.group(1) if python else '(unknown)'}, "
                         f"but {LOCK.name} is resolved for Python {IMAGE_PYTHON}")
    with dockerfile.open("a") as handle:
        handle.write(DOCKERFILE_ADDITIONS.format(dicom_port=DICOM_PORT, http_port=HTTP_PORT,
                                                 writable=" ".join(WRITABLE), entry_point=ENTRY_POINT))
    complete_app_manifest(layout.context / "map" / "app.json")
    entry = layout.context / "segmamba-entry"
    shutil.copyfile(ENTRY_SCRIPT, entry)
    entry.chmod(0o755)
    tags = [*record["tags"], *([user_tag] if user_tag not in record["tags"] else [])]
    command = ["docker", "build", "--pull"]
    for platform in record["platforms"]:
        command += ["--platform", platform]
    for key, value in record["build_args"].items():
        command += ["--build-arg", f"{key}={value}"]
    for tag in tags:
        command += ["--tag", tag]
    command += ["--file", str(dockerfile.relative_to(layout.out)), str(layout.context.relative_to(layout.out))]
    layout.build_script.write_text(
        "#!/bin/sh\n# Builds the MAP image from ./context (written by packaging/build_map.py).\n"
        "# Needs a Docker engine with BuildKit; another platform than the host's also needs QEMU (binfmt).\n"
        f"set -eu\ncd \"$(dirname \"$0\")\"\n{shlex.join(command)}\n"
    )
    layout.build_script.chmod(0o755)
    return command


def docker_engine() -> bool:
    """True when a Docker client on PATH reaches a running engine."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def build(argv: list[str] | None = None) -> int:
    """The whole build; returns the exit status."""
    args = parse_args(argv)
    args.config = args.config.resolve()
    layout = Layout(args.out.resolve())
    check_toolchain()
    manifest = read_manifest(args.config)
    model = find_model(args.models.resolve())
    prepare_out(layout)
    stage(layout, model, args.config, args.requirements, args.torch_index, args.platform)
    record = run_packager(layout, args)
    command = complete_context(layout, record, args.tag)
    info = {
        "tag": args.tag, "image_tags": [c for p, c in itertools.pairwise(command) if p == "--tag"],
        "platform": args.platform, "docker_platforms": record["platforms"], "model": model.name,
        "model_source": str(model), "application": manifest["application"], "resources": manifest["resources"],
        "toolchain": PINS, "context": str(layout.context), "build_command": command, "image_built": False,
    }
    print(f"build context: {layout.context}")
    print(f"  Dockerfile, map/app.json, map/pkg.json, app/, models/{model.name}/, pip/requirements.txt")
    print(f"  image build command: {layout.build_script}")
    status = EXIT_OK
    if args.context_only:
        print("--context-only: no image built")
    elif not docker_engine():
        print("no Docker engine here: the build context is complete, the image is not built "
              f"(exit status {EXIT_NO_ENGINE}); on a machine with Docker run {layout.build_script}")
        status = EXIT_NO_ENGINE
    else:
        result = subprocess.run(command, cwd=layout.out, check=False)
        if result.returncode != 0:
            raise BuildError(f"docker build failed (exit status {result.returncode}); context: {layout.context}")
        info["image_built"] = True
        print(f"image built: {', '.join(info['image_tags'])}")
    layout.info.write_text(json.dumps(info, indent=2) + "\n")
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        return build(argv)
    except BuildError as error:
        print(f"ERROR {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
