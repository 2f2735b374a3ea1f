"""The application starts under any uid, as containers run it (``docker run --user``, OpenShift)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.paths import REPO


def test_app_imports_monai_as_a_uid_without_passwd_entry() -> None:
    """`python -m app` on an empty folder as uid 54321 (the suite runs as root, as CI does): the study's
    error line, not a KeyError from getpass when monai is imported."""
    uid = 54321
    tmp_path = Path(tempfile.mkdtemp(prefix="any-uid-"))  # pytest's tmp_path is private to root
    (tmp_path / "in").mkdir()
    for folder in (tmp_path, tmp_path / "in"):
        os.chown(folder, uid, uid)
    command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-m", "app",
               "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress"]
    result = subprocess.run(command, cwd=REPO, env={"PATH": "/usr/bin:/bin", "HOME": "/"}, capture_output=True,
                            text=True, timeout=300)
    assert "getpwuid" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no files" in result.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
