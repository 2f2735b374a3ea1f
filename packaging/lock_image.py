#!/usr/bin/env python3
"""Write packaging/requirements-image.lock: every package of the x86_64 image, pinned and hashed.

From the repository root, with the project's virtual environment (uv is in requirements-dev.txt)::

    .venv/bin/python packaging/lock_image.py           # write the lock
    .venv/bin/python packaging/lock_image.py --sizes   # the wheels' download sizes, largest first

The image runs Ubuntu 24.04's Python (3.12, glibc 2.39) on x86_64, so the lock is resolved by
``uv pip compile`` for that interpreter and platform, from requirements.txt, with the versions of
the tested virtual environment as constraints: the image gets the versions the tests ran with,
for every package both hold. Exception: Triton, which PyPI's CUDA torch wheel pins exactly (the
test venv holds a newer Triton for the CPU interpreter tests, next to a CPU torch that needs none).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

PACKAGING = Path(__file__).resolve().parent
REPO = PACKAGING.parent
LOCK = PACKAGING / "requirements-image.lock"
IMAGE_PYTHON = "3.12"  # python3 of nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04 (packager pins 3.12.3)
IMAGE_PLATFORM = "x86_64-manylinux_2_39"  # Ubuntu 24.04: glibc 2.39
NOT_CONSTRAINED = {"triton"}  # pinned by torch's CUDA wheel (see the module docstring)
HEADER = """\
# Locked requirements of the segmamba-node MAP image (linux x86_64, Python {python}).
# Written by packaging/lock_image.py from requirements.txt with the tested venv's versions as
# constraints; packaging/build_map.py stages this file as the image's pip/requirements.txt.
# Regenerate after changing requirements.txt: .venv/bin/python packaging/lock_image.py
"""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def venv_constraints() -> str:
    """``name==version`` of every distribution in this environment (local tags such as +cpu dropped)."""
    lines = {}
    for dist in importlib.metadata.distributions():
        name = normalise(dist.metadata["Name"])
        if name not in NOT_CONSTRAINED:
            lines[name] = f"{name}=={dist.version.split('+', 1)[0]}"
    return "\n".join(sorted(lines.values())) + "\n"


def _compile(requirements: Path, folder: Path, *options: str) -> Path:
    """``uv pip compile`` for the image's interpreter and platform, constrained to the venv's versions."""
    constraints = folder / "venv-constraints.txt"
    constraints.write_text(venv_constraints())
    output = folder / ("pylock.toml" if "pylock" in options else "lock.txt")
    command = [str(Path(sys.executable).parent / "uv"), "pip", "compile", str(requirements),
               "--constraint", str(constraints), "--python-version", IMAGE_PYTHON,
               "--python-platform", IMAGE_PLATFORM, "--no-python-downloads", "--quiet",
               *[option for option in options if option != "pylock"], "--output-file", str(output)]
    subprocess.run(command, cwd=REPO, check=True)
    return output


def compile_lock(requirements: Path, output: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        body = _compile(requirements, Path(folder), "--generate-hashes", "--no-header", "--annotation-style", "line")
        text = re.sub(r"\s*#\s+via .*", "", body.read_text())  # the 'via' lines name a temporary path
    output.write_text(HEADER.format(python=IMAGE_PYTHON) + text)


def _fits_image(filename: str) -> bool:
    tags = filename.removesuffix(".whl").split("-")[-3:]
    python, _abi, platform = tags
    return (platform == "any" or "x86_64" in platform) and any(t in python for t in ("cp312", "py3", "cp311"))


def wheel_sizes(requirements: Path) -> list[tuple[str, str, int]]:
    """(name, version, bytes) of the wheel pip would download for each locked package, largest first."""
    with tempfile.TemporaryDirectory() as folder:
        lock = tomllib.loads(_compile(requirements, Path(folder), "pylock").read_text())
    sizes = []
    for package in lock["packages"]:
        wheels = [w for w in package.get("wheels", []) if _fits_image(w["url"].rsplit("/", 1)[-1])]
        chosen = max(wheels, key=lambda w: ("x86_64" in w["url"], w["size"])) if wheels else package["sdist"]
        sizes.append((package["name"], package["version"], int(chosen["size"])))
    return sorted(sizes, key=lambda row: -row[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", action="store_true", help="print the wheels' sizes instead of writing the lock")
    if parser.parse_args().sizes:
        sizes = wheel_sizes(REPO / "requirements.txt")
        print(f"{len(sizes)} packages, {sum(s for *_, s in sizes) / 1e9:.2f} GB of wheels (compressed)")
        for name, version, size in sizes[:15]:
            print(f"{size / 1e6:9.1f} MB  {name}=={version}")
        return
    compile_lock(REPO / "requirements.txt", LOCK)
    print(f"wrote {LOCK}")


if __name__ == "__main__":
    main()
