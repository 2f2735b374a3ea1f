"""Triton's first launch builds a C launcher (gcc + Python.h): with them it loads, without them the
``auto`` scan backend falls back to the chunked one with one warning (a GPU image without a compiler)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from triton.runtime import build
from triton.runtime.build import compile_module_from_src

from segmamba.scan import available_backends, register_backend, registry, selective_scan
from segmamba.scan.reference import reference_scan

# What Triton's CUDA driver compiles at first use, in small: a CPython extension module.
LAUNCHER = """
#define PY_SSIZE_T_CLEAN
#include <Python.h>
static PyObject *ready(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"ready", ready, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "%s", NULL, -1, methods};
PyMODINIT_FUNC PyInit_%s(void) { return PyModule_Create(&module); }
"""


def build_launcher(name: str) -> int:
    """Triton's own build path (compiler lookup, Python.h, cache) for a launcher-like module."""
    return int(compile_module_from_src(LAUNCHER % (name, name), name).ready())


@pytest.fixture
def triton_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_triton_builds_its_launcher_with_gcc_and_python_headers(triton_cache: Path) -> None:
    """What the image provides (gcc, python3-dev): Triton's build of a C extension succeeds."""
    assert build_launcher("segmamba_launcher_ok") == 42


def test_auto_scan_falls_back_to_chunked_without_a_c_compiler(
    triton_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """No gcc/cc on PATH and no CC: Triton's real build error, then auto uses chunked, warned once."""
    empty = triton_cache / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    build._find_compiler.cache_clear()  # Triton looks the compiler up once per process
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    monkeypatch.setattr(registry, "_PROVEN", set())
    monkeypatch.setattr(registry, "_DISABLED", {})
    launches: list[int] = []

    def triton_like(*args: object) -> torch.Tensor:
        launches.append(1)
        build_launcher("segmamba_launcher_missing_cc")  # raises: no C compiler
        raise AssertionError("the launcher built without a compiler")

    register_backend("triton-no-cc", triton_like, available=lambda: True, accepts=lambda u: True, auto_priority=999)
    generator = torch.Generator().manual_seed(0)
    batch, dim, length, state = 1, 2, 5, 4
    inputs = {
        "u": torch.randn(batch, dim, length, generator=generator),
        "delta": torch.rand(batch, dim, length, generator=generator),
        "A": -torch.rand(dim, state, generator=generator),
        "B": torch.randn(batch, state, length, generator=generator),
        "C": torch.randn(batch, state, length, generator=generator),
    }
    with caplog.at_level("WARNING", logger="segmamba.scan.registry"):
        first = selective_scan(**inputs)
        second = selective_scan(**inputs)
    expected = reference_scan(**{k: v.double() for k, v in inputs.items()})
    torch.testing.assert_close(first.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, first)
    assert launches == [1]
    lines = [r.getMessage() for r in caplog.records if "triton-no-cc" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "failed on first use" in lines[0] and "Failed to find C compiler" in lines[0]
    assert "using the next backend instead" in lines[0]
    assert "triton-no-cc" not in available_backends()
    build._find_compiler.cache_clear()
