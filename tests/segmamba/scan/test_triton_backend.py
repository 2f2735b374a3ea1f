"""The Triton selective-scan backend against the float64 reference, on CPU through Triton's interpreter.

The interpreter only works if TRITON_INTERPRET=1 is set before triton is first imported, and
other tests (or torch itself) may import triton first. So the kernel cases run in one child
process started with TRITON_INTERPRET=1 (this file run as a script), which prints each case's
relative error; the parametrised tests below check them. Shapes are tiny: the interpreter
runs the in-tile associative scan one element at a time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

# this file also runs as a script in a child process, where the tests package is not importable
REPO = Path(__file__).resolve().parents[3]

# name -> (batch, dim, n_state, length, options); tiles of 8 positions, 4 channels per block
CASES: dict[str, tuple[int, int, int, int, dict[str, Any]]] = {
    "L1": (2, 4, 4, 1, {}),
    "L5-below-tile": (2, 4, 4, 5, {"large": True}),
    "L8-one-tile": (2, 4, 4, 8, {}),
    "L13-ragged-one-chunk": (2, 4, 4, 13, {"chunk_tiles": 4}),
    "L37-chunks-of-1-small": (2, 4, 4, 37, {"chunk_tiles": 1}),
    "L37-chunks-of-1-large": (2, 4, 4, 37, {"chunk_tiles": 1, "large": True}),
    "L45-chunks-of-2-large": (1, 4, 4, 45, {"chunk_tiles": 2, "large": True}),
    "L45-auto-chunks": (2, 4, 4, 45, {"chunk_tiles": None}),
    "bare": (2, 4, 4, 21, {"chunk_tiles": 1, "softplus": False, "with_d": False, "with_z": False}),
    "no-bias": (2, 4, 4, 21, {"chunk_tiles": 1, "with_bias": False}),
    "no-z": (2, 4, 4, 21, {"chunk_tiles": 1, "with_z": False}),
    "no-d": (2, 4, 4, 21, {"chunk_tiles": 1, "with_d": False}),
    "masked-channels-and-states": (1, 6, 5, 19, {"chunk_tiles": 1}),
    "mamba-state-16": (1, 4, 16, 12, {"chunk_tiles": 1, "large": True}),
    "network-layout": (2, 4, 4, 19, {"chunk_tiles": 1, "layout": True}),
    "long-large-steps": (1, 2, 4, 400, {"chunk_tiles": 10, "large": True, "block_e": 2}),
}
HALF_CASES = {"float16": (2, 4, 4, 27, {"chunk_tiles": 1}), "bfloat16": (2, 4, 4, 27, {"chunk_tiles": 1})}


def make_inputs(batch: int, dim: int, n_state: int, length: int, *, large: bool = False, softplus: bool = True,
                with_d: bool = True, with_z: bool = True, with_bias: bool = True, seed: int = 0) -> dict[str, Any]:
    """float64 inputs: steps in [1e-3, 0.1] (dt_proj's initial bias) or large, softplus(N(1, 1))."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    dt = torch.exp(torch.rand(dim, generator=g, dtype=torch.float64) * math.log(100.0) + math.log(1e-3))
    if large:
        delta, bias = randn(batch, dim, length) + 1.0, torch.zeros(dim, dtype=torch.float64)
    else:
        delta, bias = 0.5 * randn(batch, dim, length), dt + torch.log(-torch.expm1(-dt))
    if not softplus:
        delta, bias = F.softplus(delta + bias[:, None]), torch.zeros(dim, dtype=torch.float64)
    if softplus and not with_bias:
        delta = delta + bias[:, None]
    return {
        "u": randn(batch, dim, length), "delta": delta,
        "A": -torch.arange(1, n_state + 1, dtype=torch.float64).repeat(dim, 1),
        "B": randn(batch, n_state, length), "C": randn(batch, n_state, length),
        "D": randn(dim) if with_d else None, "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": bias if softplus and with_bias else None, "delta_softplus": softplus,
    }


def _run_case(shape: tuple[int, int, int, int, dict[str, Any]], dtype: torch.dtype, seed: int) -> float:
    """Relative L2 error of the interpreted kernel against the float64 reference."""
    from segmamba.scan.reference import reference_scan
    from segmamba.scan.triton_backend import ScanConfig, triton_scan

    batch, dim, n_state, length, opts = shape
    opts = dict(opts)
    config = ScanConfig(block_e=opts.pop("block_e", 4), block_t=8, chunk_tiles=opts.pop("chunk_tiles", None))
    layout = opts.pop("layout", False)
    inputs = make_inputs(batch, dim, n_state, length, seed=seed, **opts)
    low = {k: v.to(dtype) if isinstance(v, torch.Tensor) and k not in ("A", "D", "delta_bias") else v
           for k, v in inputs.items()}
    # the reference sees exactly the rounded inputs the kernel sees
    ref = reference_scan(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in low.items()})
    if layout:  # as the network hands them over: delta and z channels-last, B and C (batch, L, N)
        for key in ("delta", "z", "B", "C"):
            low[key] = low[key].transpose(1, 2).contiguous().transpose(1, 2)
    with torch.inference_mode():
        out = triton_scan(**{k: v.float() if k in ("A", "D", "delta_bias") and v is not None else v
                             for k, v in low.items()}, config=config)
    assert out.dtype == dtype and out.shape == ref.shape
    if not torch.isfinite(out).all():
        return math.inf
    return float((out.double() - ref).norm() / ref.norm())


def _worker() -> None:
    """Run every case under the interpreter (TRITON_INTERPRET=1 set by the parent); print JSON."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    errors = {name: _run_case(shape, torch.float32, seed) for seed, (name, shape) in enumerate(CASES.items())}
    for name, shape in HALF_CASES.items():
        errors[name] = _run_case(shape, getattr(torch, name), 99)
    print(json.dumps(errors))


@pytest.fixture(scope="module")
def interpreted_errors() -> dict[str, float]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_float64_reference(interpreted_errors: dict[str, float], name: str) -> None:
    assert interpreted_errors[name] <= 1e-5


@pytest.mark.parametrize("name", list(HALF_CASES))
def test_half_inputs_accumulate_in_float32(interpreted_errors: dict[str, float], name: str) -> None:
    """Half inputs, float32 arithmetic: only the output's rounding to the half type remains."""
    assert interpreted_errors[name] <= (2e-3 if name == "float16" else 1e-2)


COMPILE_CHECK = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from segmamba.scan.triton_backend import DEFAULT_CONFIG as cfg, _kernels
chunk, carry = _kernels(False)
flags = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True,
         "BLOCK_E": cfg.block_e, "BLOCK_N": 16, "BLOCK_T": cfg.block_t}
def build(kernel, ptr, constexprs):
    names = kernel.arg_names
    sig = {n: ptr(n) if n.endswith("_ptr") else "constexpr" if n in constexprs else "i32" for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps})
    assert compiled.asm["cubin"]
for dtype in ("fp32", "bf16", "fp16"):
    io = lambda n: "*fp32" if n in ("a2_ptr", "d_ptr", "bias_ptr", "states_ptr", "sums_ptr") else "*" + dtype
    for stage in (1, 3):
        build(chunk, io, {**flags, "STAGE": stage})
build(carry, lambda n: "*fp32", {"BLOCK_E": cfg.block_e, "BLOCK_N": 16})
print("ok")
"""


def test_kernels_compile_to_sm90_cubin_without_a_gpu() -> None:
    """Triton's full compiler (TTIR -> PTX -> ptxas cubin for an H100) runs on the CPU."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", COMPILE_CHECK], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-4000:]


def test_registered_for_auto_on_cuda_above_mamba_ssm() -> None:
    from segmamba.scan import registry

    backends = registry._BACKENDS
    assert "triton" in backends
    triton_b, mamba_b = backends["triton"], backends["mamba_ssm"]
    assert (triton_b.auto_priority or 0) > (mamba_b.auto_priority or 0)
    assert not triton_b.accepts(torch.zeros(1, 1, 1))  # CPU tensors: never picked by "auto"
    if not torch.cuda.is_available():
        assert not triton_b.available()
        assert registry.resolve("auto", torch.zeros(1, 1, 1)).name == "chunked"


def test_gradients_fall_back_to_chunked_torch_path() -> None:
    """A graph is needed: the forward-only kernel is bypassed, gradients match the reference."""
    from segmamba.scan.reference import reference_scan
    from segmamba.scan.triton_backend import triton_scan

    inputs = make_inputs(2, 3, 4, 21, seed=5)
    leaves = {k: v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    out = triton_scan(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in leaves.items()})
    ref = reference_scan(**inputs).detach()
    assert float((out.detach().double() - ref).norm() / ref.norm()) <= 1e-5
    out.sum().backward()
    assert leaves["u"].grad is not None and torch.isfinite(leaves["u"].grad).all()


def test_cpu_tensors_outside_interpreter_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from segmamba.scan.triton_backend import triton_scan

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_inputs(1, 2, 4, 3)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="CUDA"):
        triton_scan(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})


def test_gpu_benchmark_smoke_runs_on_cpu() -> None:
    """benchmarks/bench_gpu.py --smoke: tiny network, triton scan row under the interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "all correctness checks passed" in done.stdout
    assert "triton e8 t32 w8" in done.stdout  # the interpreted kernel ran inside the benchmark


if __name__ == "__main__":
    _worker()
