"""A watched inbox folder: files dropped by other systems enter the same intake as C-STOREs.

watchdog reports new and changed files; a file is taken once it has not changed for ``settle``
seconds (writers should still write under a hidden name and rename). Accepted files (and
duplicates) are deleted from the inbox; refused files are deleted too, once the intake has kept
them in the spool's bounded quarantine with their reason (``<spool>/quarantine/*.json``, which
names the inbox file). Files the node could not store for lack of disk stay and are retried.
Files already present at start are taken too.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from app.node.receive.intake import Intake

log = logging.getLogger(__name__)


class _Events(FileSystemEventHandler):
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        target = getattr(event, "dest_path", "") or event.src_path
        self.inbox.notice(Path(str(target)))


class Inbox:
    """Watches ``folder`` and feeds its files to ``intake`` (see the module docstring)."""

    def __init__(self, folder: Path, intake: Intake, settle: float = 1.0) -> None:
        self.folder = Path(folder)
        self.intake = intake
        self.settle = settle
        self._pending: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(_Events(self), str(self.folder), recursive=True)
        self._observer.start()
        for path in self.folder.rglob("*"):
            self.notice(path)
        self._thread = threading.Thread(target=self._run, name="inbox", daemon=True)
        self._thread.start()
        log.info("watching inbox %s", self.folder)

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def notice(self, path: Path) -> None:
        """Remember a (possibly still growing) file; hidden names are skipped."""
        relative = path.relative_to(self.folder) if path.is_relative_to(self.folder) else None
        if relative is None or any(part.startswith(".") for part in relative.parts):
            return
        with self._lock:
            self._pending[path] = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(0.2, self.settle)):
            self.poll()

    def poll(self) -> None:
        """Take every noticed file that has settled."""
        now = time.monotonic()
        with self._lock:
            ready = [p for p, seen in self._pending.items() if now - seen >= self.settle]
        for path in ready:
            with self._lock:
                self._pending.pop(path, None)
            if path.is_file():
                self._take(path)

    def _take(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as error:
            log.warning("inbox: cannot read %s: %s", path, error)
            return
        result = self.intake.accept(data, f"inbox:{path.name}")
        if result.ok:
            path.unlink(missing_ok=True)
            return
        if result.transient:  # our disk or journal failed: try the same file again later
            with self._lock:
                self._pending[path] = time.monotonic() + 10 * self.settle
            return
        path.unlink(missing_ok=True)
        kept = result.quarantined.name if result.quarantined else "nothing"
        log.warning("inbox: %s refused (quarantine: %s): %s", path.name, kept, result.comment)
