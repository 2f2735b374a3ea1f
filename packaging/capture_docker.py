"""Stand-in for the ``docker`` client while ``monai-deploy package`` runs (see build_map.py).

holoscan-cli 4.2.0 writes the build context (Dockerfile, map/app.json, map/pkg.json, app/,
models/, pip/requirements.txt) into a temporary folder, builds it with ``docker buildx``
(through python-on-whales) and deletes the folder. Put first on PATH, this program answers the
few buildx calls made before the build (``ls``, ``inspect``, ``create``) and, on
``buildx build``, copies the context to $SEGMAMBA_CAPTURE_DIR and records the build's
arguments in $SEGMAMBA_CAPTURE_RECORD (JSON). It then exits with status 1, so the packager
reports the image as not built; build_map.py builds it from the captured context when an
engine exists. Only the standard library is used.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

FAILED = 1


def _link_or_copy(source: str, target: str) -> None:
    """Hard link when source and target share a file system (the context holds the weights)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _options(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split buildx arguments into ``--name value`` options (repeatable) and positionals."""
    options: dict[str, list[str]] = {}
    positionals: list[str] = []
    flags = {"--load", "--push", "--pull", "--no-cache", "--bootstrap", "--use", "--append"}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg.partition("=")
            options.setdefault(name, []).append(value)
        elif arg in flags:
            options.setdefault(arg, []).append("true")
        elif arg.startswith("--") and index + 1 < len(args):
            options.setdefault(arg, []).append(args[index + 1])
            index += 1
        else:
            positionals.append(arg)
        index += 1
    return options, positionals


def _build(args: list[str]) -> int:
    options, positionals = _options(args)
    if not positionals:
        print("docker stand-in: 'buildx build' without a context folder", file=sys.stderr)
        return FAILED
    context = Path(positionals[-1])
    target = Path(os.environ["SEGMAMBA_CAPTURE_DIR"])
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(context, target, symlinks=True, copy_function=_link_or_copy)
    dockerfile = Path(options.get("--file", [str(context / "Dockerfile")])[-1])
    record = {
        "dockerfile": str(target / dockerfile.relative_to(context)) if dockerfile.is_relative_to(context)
        else str(dockerfile),
        "tags": options.get("--tag", []),
        "platforms": [p for value in options.get("--platform", []) for p in value.split(",")],
        "build_args": dict(item.partition("=")[::2] for item in options.get("--build-arg", [])),
        "arguments": args,
    }
    Path(os.environ["SEGMAMBA_CAPTURE_RECORD"]).write_text(json.dumps(record, indent=2) + "\n")
    print(f"docker stand-in: build context captured in {target}; no image is built here", file=sys.stderr)
    return FAILED


def main(argv: list[str]) -> int:
    """Answer one docker command line the way the packager needs."""
    builder = os.environ.get("SEGMAMBA_BUILDX_BUILDER", "holoscan_app_builder")
    if "buildx" not in argv:
        print(f"docker stand-in: unsupported command {argv!r}", file=sys.stderr)
        return FAILED
    rest = argv[argv.index("buildx") + 1:]
    command, args = (rest[0], rest[1:]) if rest else ("", [])
    if command == "ls":
        print(json.dumps({"Name": builder, "Driver": "docker-container"}))
        return 0
    if command == "inspect":
        name = next((a for a in args if not a.startswith("-")), builder)
        print(f"Name:   {name}\nDriver: docker-container")
        return 0
    if command == "create":
        options, _ = _options(args)
        print(options.get("--name", [builder])[-1])
        return 0
    if command == "build":
        return _build(args)
    print(f"docker stand-in: unsupported command 'buildx {command}'", file=sys.stderr)
    return FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
