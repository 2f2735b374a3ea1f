"""Entry point of the packaged application (staged as ``__main__.py`` by build_map.py).

``python3 /opt/holoscan/app [serve] [options]`` runs ``app.cli.main``. Batch mode, the MAP
contract, is the default. ``SEGMAMBA_MODE=serve`` starts the DICOM node as if ``serve`` were
the first argument, for runtimes that set environment variables but not arguments;
``SEGMAMBA_MODE=batch`` or no value changes nothing. An explicit ``serve`` argument always wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

MODE_VARIABLE = "SEGMAMBA_MODE"
MODES = ("batch", "serve")
EXIT_BAD_MODE = 2  # the application's exit status for configuration errors


def arguments(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The command line for app.cli.main: ``argv``, with ``serve`` first when the mode asks."""
    mode = environ.get(MODE_VARIABLE, "").strip().lower() or "batch"
    if mode not in MODES:
        raise ValueError(f"{MODE_VARIABLE} must be one of {', '.join(MODES)}, got {environ[MODE_VARIABLE]!r}")
    if mode == "serve" and list(argv[:1]) != ["serve"]:
        return ["serve", *argv]
    return list(argv)


def run() -> int:
    """Dispatch to the application's command line."""
    try:
        argv = arguments(sys.argv[1:], os.environ)
    except ValueError as error:
        print(f"ERROR configuration: {error}", file=sys.stderr)
        return EXIT_BAD_MODE
    from app.cli import main

    return main(argv, program=True)


if __name__ == "__main__":
    sys.exit(run())
