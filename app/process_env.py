"""Process environment fixes that must run before the heavy imports (monai, torch).

MONAI calls ``getpass.getuser()`` when it is imported. In a container started with an arbitrary
user id (``docker run --user``, OpenShift, mercure) that uid has no passwd entry, and Docker sets
neither USER nor LOGNAME, so the import raises KeyError and the application cannot start. Such containers also often
have HOME=/ (not writable), where libraries imported with monai (cupy, matplotlib) try to create
their cache folders and fail.
"""

from __future__ import annotations

import getpass
import os
import tempfile


def ensure_login_name() -> str:
    """Make ``getpass.getuser()`` work for any uid: set LOGNAME to ``uid<N>`` when it would fail."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        name = f"uid{os.getuid()}"
        os.environ["LOGNAME"] = name
        return name


def ensure_writable_home() -> str:
    """Point HOME at a private temporary folder when the given one is missing or not writable."""
    home = os.environ.get("HOME", "")
    if home and os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK):
        return home
    os.environ["HOME"] = tempfile.mkdtemp(prefix="segmamba-home-")
    return os.environ["HOME"]


def prepare_process() -> None:
    """Everything the process needs before monai is imported: a login name and a writable HOME."""
    ensure_login_name()
    ensure_writable_home()
