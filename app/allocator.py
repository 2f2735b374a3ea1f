"""The memory allocator of the processes that run the network: jemalloc, keeping freed pages, where installed.

On the CPU the network allocates and frees about 18 GB of activations per 128^3 window, in blocks
of tens to hundreds of MiB. glibc's malloc gives each such block back to the kernel and maps fresh
pages for the next one, every page faulted in and zeroed: 4.7 million page faults and about 9 s
of system time per bfloat16 window on 2 cores, a third of the CPU time. jemalloc told to keep
freed pages (`JEMALLOC_CONF`) reuses them: the same window runs about 1.5x faster.

An allocator is chosen when a process starts (``LD_PRELOAD``), so:

* a batch run (``python -m app``, the MAP entry) restarts itself once with jemalloc preloaded
  (`restart_with`), before torch is imported;
* the node starts the worker process that runs the network with the variables set
  (`for_children`, app/node/executor.py); the worker gives the kept pages back after each job
  (`release_kept_memory`), so an idle node does not hold a study's peak.

``allocator`` setting: ``auto`` (jemalloc when libjemalloc is installed, else the system's),
``jemalloc`` (required: a clear error when missing), ``system``. A ``MALLOC_CONF`` already in
the environment is kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterator, Mapping

from operators.errors import ConfigurationError

log = logging.getLogger(__name__)

ALLOCATORS = ("auto", "jemalloc", "system")
# Keep freed pages for reuse (no decay) and treat large blocks like the others (no separate
# arena that returns them at once); pages go back only through release_kept_memory.
JEMALLOC_CONF = "oversize_threshold:0,background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1"
RESTARTED = "SEGMAMBA_ALLOCATOR_RESTARTED"  # set on the restart: a preload that failed is not retried
_ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL


def jemalloc_library() -> str | None:
    """The jemalloc shared library's name as the dynamic loader finds it, or None when not installed."""
    return ctypes.util.find_library("jemalloc") if sys.platform.startswith("linux") else None


def jemalloc_active() -> bool:
    """Whether this process allocates with jemalloc (its ``mallctl`` is linked in)."""
    return hasattr(ctypes.CDLL(None), "mallctl")


def in_use() -> str:
    """``jemalloc`` or ``system``: the allocator of this process."""
    return "jemalloc" if jemalloc_active() else "system"


def environment_for(choice: str, environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with jemalloc preloaded for a new process, or None when ``choice`` keeps the system's.

    Raises ConfigurationError when jemalloc is required and not installed, or ``choice`` is unknown.
    """
    if choice not in ALLOCATORS:
        raise ConfigurationError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {choice!r}")
    if choice == "system":
        return None
    library = jemalloc_library()
    if library is None:
        if choice == "jemalloc":
            raise ConfigurationError("allocator jemalloc: libjemalloc is not installed (Debian/Ubuntu: apt-get "
                                     "install libjemalloc2), or set allocator: auto or system")
        return None
    environment = dict(environ)
    preloaded = environment.get("LD_PRELOAD", "").split()
    if library not in preloaded:
        environment["LD_PRELOAD"] = " ".join([library, *preloaded])
    environment.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return environment


def restart_with(choice: str) -> None:
    """Replace this process by the same command with jemalloc preloaded, when ``choice`` asks for it
    and it is not in use yet; returns when nothing is to be done, the restart already happened, or
    the process cannot be replaced (a warning; the run goes on with the system's malloc)."""
    if jemalloc_active():
        return
    environment = environment_for(choice, os.environ)
    if environment is None:
        return
    if os.environ.get(RESTARTED):
        log.warning("memory allocator: jemalloc was preloaded but is not in use; running with the system's")
        return
    environment[RESTARTED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError as error:  # e.g. an interpreter this uid may run but not exec again: go on as is
        log.warning("memory allocator: cannot restart with jemalloc (%s); running with the system's", error)


@contextlib.contextmanager
def for_children(choice: str) -> Iterator[None]:
    """Within the block, processes started from this one use the allocator ``choice`` (``system``:
    jemalloc left out of LD_PRELOAD, other preloads kept); LD_PRELOAD and MALLOC_CONF are restored
    after it, and no other variable is touched."""
    keys = ("LD_PRELOAD", "MALLOC_CONF")
    saved = {key: os.environ.get(key) for key in keys}
    if choice == "system":
        others = " ".join(entry for entry in os.environ.get("LD_PRELOAD", "").split() if "jemalloc" not in entry)
        wanted: dict[str, str | None] = {"LD_PRELOAD": others or None, "MALLOC_CONF": None}
    else:
        environment = environment_for(choice, os.environ) or {}
        wanted = {key: environment[key] for key in keys if key in environment}
    try:
        _set_environment(wanted)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: Mapping[str, str | None]) -> None:
    """Set each variable to its value; None removes it."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def release_kept_memory() -> bool:
    """Give the freed pages jemalloc keeps back to the system; False when jemalloc is not in use."""
    if not jemalloc_active():
        return False
    mallctl = ctypes.CDLL(None).mallctl
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    mallctl.restype = ctypes.c_int
    return mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0) == 0
