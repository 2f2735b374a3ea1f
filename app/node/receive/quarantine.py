"""The quarantine folder: instances the intake refused, kept with their reason, bounded in size.

Each refused object becomes ``<UTC time>-<id>.dcm`` (the bytes as received) beside
``<same>.json`` (status, reason, sender, size). When the folder holds more than ``max_bytes``
the oldest entries go first; an object larger than the bound keeps only its ``.json``. The
folder lives in the spool, so it has the spool's protection (it holds PHI like the spool does).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from operators.atomic_files import write_atomically

log = logging.getLogger(__name__)


class Quarantine:
    """Keeps refused instances (see the module docstring)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: deque[tuple[str, int]] = deque()  # (stem, bytes of .dcm + .json), oldest first
        for reason_file in sorted(self.folder.glob("*.json")):
            stem = reason_file.stem
            size = reason_file.stat().st_size + sum(p.stat().st_size for p in self.folder.glob(f"{stem}.dcm"))
            self._entries.append((stem, size))
        self.total = sum(size for _stem, size in self._entries)

    def keep(self, data: bytes, status: int, reason: str, source: str) -> Path:
        """Store one refused object and why; returns the path of its ``.json``."""
        stem = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        kept = len(data) <= self.max_bytes // 2
        record = {"status": f"0x{status:04X}", "reason": reason, "source": source, "bytes": len(data),
                  "received_at": time.time(), "data": f"{stem}.dcm" if kept else "not kept (larger than the bound)"}
        text = (json.dumps(record, indent=1) + "\n").encode()
        with self._lock:
            try:
                if kept:
                    write_atomically(self.folder / f"{stem}.dcm", data)
                write_atomically(self.folder / f"{stem}.json", text)
            except OSError as error:  # the quarantine is a courtesy: never fail the answer for it
                log.warning("quarantine: cannot keep a refused object: %s", error)
                return self.folder / f"{stem}.json"
            self._entries.append((stem, len(text) + (len(data) if kept else 0)))
            self.total += self._entries[-1][1]
            self._prune()
        return self.folder / f"{stem}.json"

    def _prune(self) -> None:
        while self.total > self.max_bytes and self._entries:
            stem, size = self._entries.popleft()
            for suffix in (".dcm", ".json"):
                (self.folder / f"{stem}{suffix}").unlink(missing_ok=True)
            self.total -= size
