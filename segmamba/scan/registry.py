"""Named scan backends and the rule that picks one for `backend="auto"`.

A backend is one function with `selective_scan`'s signature (minus `backend`), plus an
availability probe. Backends with an `auto_priority` are tried by "auto" from the highest
priority down, each only if available and if its `accepts(u)` says yes; the `fallback`
backend (`chunked`) takes everything else. A GPU Triton backend, for instance, needs one
call: `register_backend("triton", triton_scan, available=..., accepts=lambda u: u.is_cuda,
auto_priority=50)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

log = logging.getLogger(__name__)

ScanFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Backend:
    """A registered scan implementation."""

    name: str
    fn: ScanFn
    available: Callable[[], bool]
    accepts: Callable[[Tensor], bool]
    auto_priority: int | None


_BACKENDS: dict[str, Backend] = {}
FALLBACK = "chunked"
_PROVEN: set[str] = set()  # backends that "auto" has run successfully in this process
_DISABLED: dict[str, str] = {}  # backends whose first run under "auto" failed -> why


def register_backend(
    name: str,
    fn: ScanFn,
    *,
    available: Callable[[], bool] = lambda: True,
    accepts: Callable[[Tensor], bool] = lambda u: True,
    auto_priority: int | None = None,
) -> None:
    """Add (or replace) a backend; `auto_priority` makes "auto" consider it, highest first."""
    if name == "auto":
        raise ValueError('"auto" is reserved for automatic selection')
    _BACKENDS[name] = Backend(name, fn, available, accepts, auto_priority)


def registered_backends() -> list[str]:
    """All registered names, available here or not."""
    return list(_BACKENDS)


def available_backends() -> list[str]:
    """Names of the backends usable in this process."""
    return [name for name, b in _BACKENDS.items() if _usable(b)]


def _usable(backend: Backend) -> bool:
    return backend.name not in _DISABLED and backend.available()


def disabled_backends() -> dict[str, str]:
    """Backends that "auto" stopped using in this process because their first run failed -> the reason."""
    return dict(_DISABLED)


def run_auto(u: Tensor, *args: object) -> Tensor:
    """Run the backend "auto" picks for ``u``; if its first run fails (say Triton finds no C compiler
    to build its launcher), log one line, stop using it in this process and run the next choice."""
    while True:
        backend = resolve("auto", u)
        if backend.name == FALLBACK or backend.name in _PROVEN:
            return backend.fn(u, *args)
        try:
            out = backend.fn(u, *args)
        except Exception as error:  # any failure to initialise: fall back, once, loudly
            _DISABLED[backend.name] = f"{type(error).__name__}: {error}"
            log.warning("scan backend %r failed on first use (%s); using the next backend instead",
                        backend.name, _DISABLED[backend.name].splitlines()[0])
            continue
        _PROVEN.add(backend.name)
        return out


def resolve(name: str, u: Tensor) -> Backend:
    """The backend to run for `name` ("auto" or a registered name) on inputs like `u`."""
    if name == "auto":
        ranked = sorted((b for b in _BACKENDS.values() if b.auto_priority is not None),
                        key=lambda b: -(b.auto_priority or 0))
        for b in ranked:
            if _usable(b) and b.accepts(u):
                return b
        return _BACKENDS[FALLBACK]
    backend = _BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"unknown scan backend {name!r}; available: {available_backends()}, or 'auto'")
    if not _usable(backend):
        raise ValueError(f"scan backend {name!r} is not available here; available: {available_backends()}")
    return backend
