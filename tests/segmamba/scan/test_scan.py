"""Selective scan backends against the float64 sequential reference."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from segmamba.scan import available_backends, register_backend, registry, selective_scan
from segmamba.scan.chunked import CHUNK_SIZE, SEGMENT_CHUNKS, chunked_scan
from segmamba.scan.mamba_ssm_backend import mamba_ssm_available
from segmamba.scan.reference import reference_scan

Inputs = dict[str, torch.Tensor | bool | None]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch: int, dim: int, n_state: int, length: int, *, large: bool = False,
                softplus: bool = True, with_d: bool = True, with_z: bool = True,
                with_bias: bool = True, seed: int = 0) -> Inputs:
    """float64 inputs. Small steps: dt in [1e-3, 0.1] as dt_proj's bias gives them;
    large steps: softplus(N(1, 1)). A = -(1..N) per row, as Mamba initialises it."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    dt = torch.exp(torch.rand(dim, generator=g, dtype=torch.float64) * math.log(100.0) + math.log(1e-3))
    if large:
        delta, bias = randn(batch, dim, length) + 1.0, torch.zeros(dim, dtype=torch.float64)
    else:
        delta, bias = 0.5 * randn(batch, dim, length), dt + torch.log(-torch.expm1(-dt))
    if not softplus:  # the scan then takes delta as the step itself: make it the same step
        delta = F.softplus(delta + bias[:, None])
        bias = torch.zeros(dim, dtype=torch.float64)
    if softplus and not with_bias:
        delta = delta + bias[:, None]
    a = -torch.arange(1, n_state + 1, dtype=torch.float64).repeat(dim, 1)
    return {
        "u": randn(batch, dim, length), "delta": delta, "A": a,
        "B": randn(batch, n_state, length), "C": randn(batch, n_state, length),
        "D": randn(dim) if with_d else None, "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": bias if softplus and with_bias else None, "delta_softplus": softplus,
    }


def cast(inputs: Inputs, dtype: torch.dtype, device: str = "cpu") -> Inputs:
    return {k: v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v
            for k, v in inputs.items()}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


def backend_runner(name: str) -> tuple[Callable[..., torch.Tensor], str]:
    """A scan function and the device its inputs must live on."""
    if name == "chunked-torch":
        return lambda **kw: chunked_scan(**kw, use_kernel=False), "cpu"
    if name == "chunked-kernel":
        return lambda **kw: chunked_scan(**kw, use_kernel=True), "cpu"
    device = "cuda" if name == "mamba_ssm" else "cpu"
    return lambda **kw: selective_scan(**kw, backend=name), device


UNDER_TEST = [n for n in available_backends() if n != "reference"] + ["chunked-torch", "chunked-kernel"]
LENGTHS = [1, 7, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 97, 2 * CHUNK_SIZE * SEGMENT_CHUNKS + 5]
OPTIONS = {
    "all": {},
    "bare": {"softplus": False, "with_d": False, "with_z": False},
    "no-bias": {"with_bias": False},
    "no-z": {"with_z": False},
    "no-d": {"with_d": False},
}


@pytest.mark.parametrize("name", UNDER_TEST)
@pytest.mark.parametrize("large", [False, True], ids=["small-steps", "large-steps"])
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_reference(name: str, large: bool, length: int) -> None:
    inputs = make_inputs(2, 4, 8, length, large=large, seed=length)
    ref = reference_scan(**inputs)
    run, device = backend_runner(name)
    with torch.no_grad():
        out = run(**cast(inputs, torch.float32, device))
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("name", UNDER_TEST)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_optional_arguments(name: str, option: str) -> None:
    inputs = make_inputs(3, 5, 16, 77, seed=1, **OPTIONS[option])
    ref = reference_scan(**inputs)
    run, device = backend_runner(name)
    with torch.no_grad():
        out = run(**cast(inputs, torch.float32, device))
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("name", UNDER_TEST)
def test_network_layouts(name: str) -> None:
    """The network hands over transposed views: delta and z channels-last, B and C (b, L, N)."""
    inputs = cast(make_inputs(2, 6, 16, 50, seed=2), torch.float32)
    ref = reference_scan(**cast(inputs, torch.float64))
    for key in ("delta", "z", "B", "C"):
        inputs[key] = inputs[key].transpose(1, 2).contiguous().transpose(1, 2)
    run, device = backend_runner(name)
    with torch.inference_mode():
        out = run(**cast(inputs, torch.float32, device))
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("name", UNDER_TEST)
def test_long_large_steps_stay_finite(name: str) -> None:
    """Chunk decays reach exp(-1e4): any 1/prod or exp(-cumsum) formulation overflows here."""
    inputs = make_inputs(1, 3, 16, 4096, large=True, seed=3)
    inputs["delta"] = inputs["delta"] * 3.0
    ref = reference_scan(**inputs)
    run, device = backend_runner(name)
    with torch.no_grad():
        out = run(**cast(inputs, torch.float32, device))
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype: torch.dtype) -> None:
    inputs = cast(make_inputs(2, 4, 8, 40, seed=4), dtype)
    out = selective_scan(**inputs)
    ref = reference_scan(**cast(inputs, torch.float64))
    assert out.dtype == dtype
    assert rel_err(out, ref) <= 1e-2  # the output's own rounding


def test_gradcheck_chunked() -> None:
    inputs = make_inputs(2, 3, 4, 11, seed=5)
    tensors = tuple(inputs[k].clone().requires_grad_(True) for k in NAMES)

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return chunked_scan(*args, delta_softplus=True, chunk_size=4, segment_chunks=2)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_gradients_match_reference(dtype: torch.dtype, tol: float) -> None:
    inputs = make_inputs(2, 4, 8, 150, seed=6)
    upstream = torch.randn(2, 4, 150, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def grads(fn: Callable[..., torch.Tensor], dt: torch.dtype) -> list[torch.Tensor]:
        leaves = [inputs[k].detach().to(dt).clone().requires_grad_(True) for k in NAMES]
        out = fn(*leaves, delta_softplus=True)
        assert out.requires_grad
        torch.autograd.backward(out, upstream.to(dt))
        return [leaf.grad.double() for leaf in leaves]

    expected = grads(reference_scan, torch.float64)
    got = grads(lambda *a, **kw: chunked_scan(*a, **kw, chunk_size=16, segment_chunks=4), dtype)
    for name, g, e in zip(NAMES, got, expected, strict=True):
        assert ((g - e).norm() / e.norm()).item() <= tol, name


def test_cpu_kernel_exp_accuracy() -> None:
    import numba
    import numpy as np

    from segmamba.scan import cpu_kernel

    @numba.njit(fastmath=cpu_kernel._FLAGS)  # the kernel's flags, which must not leak into _expf
    def exps(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = cpu_kernel._expf(x[i])
        return out

    x = np.linspace(cpu_kernel.EXP_FLOOR, cpu_kernel.EXP_CEIL, 400_001).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(exps(x) - exact) / exact) < 1.2e-7  # 1 ulp
    assert exps(np.array([-1e4, 0.0], np.float32)).tolist() == [np.float32(np.exp(np.float32(-60))), 1.0]


def test_unknown_backend_names_the_available_ones() -> None:
    inputs = cast(make_inputs(1, 2, 4, 5), torch.float32)
    with pytest.raises(ValueError, match=r"'nope'.*reference.*chunked"):
        selective_scan(**inputs, backend="nope")


def test_mamba_ssm_backend_when_unavailable() -> None:
    inputs = cast(make_inputs(1, 2, 4, 5), torch.float32)
    if mamba_ssm_available():
        assert "mamba_ssm" in available_backends()
        return
    assert "mamba_ssm" not in available_backends()
    with pytest.raises(ValueError, match=r"mamba_ssm.*not available"):
        selective_scan(**inputs, backend="mamba_ssm")


def test_auto_selection_and_registration_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = cast(make_inputs(1, 2, 4, 5), torch.float32)
    assert registry.resolve("auto", inputs["u"]).name == "chunked"
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    calls = []

    def fake(*args: object) -> torch.Tensor:
        calls.append(len(args))
        return torch.zeros(1)

    register_backend("fake-gpu", fake, available=lambda: True, accepts=lambda u: u.dtype == torch.float32,
                     auto_priority=10)
    selective_scan(**inputs)
    assert calls == [9]
    assert registry.resolve("auto", inputs["u"].double()).name == "chunked"  # not accepted: fallback
    with pytest.raises(ValueError, match="reserved"):
        register_backend("auto", fake)


def test_auto_falls_back_when_a_backend_fails_on_first_use(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Triton in an image without a C compiler fails at its first launch: auto must use chunked, once warned."""
    inputs = cast(make_inputs(1, 2, 4, 5), torch.float32)
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    monkeypatch.setattr(registry, "_PROVEN", set())
    monkeypatch.setattr(registry, "_DISABLED", {})
    attempts = []

    def no_compiler(*args: object) -> torch.Tensor:
        attempts.append(1)
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    register_backend("fake-triton", no_compiler, available=lambda: True, accepts=lambda u: True, auto_priority=999)
    expected = reference_scan(**cast(inputs, torch.float64))
    with caplog.at_level("WARNING", logger="segmamba.scan.registry"):
        first = selective_scan(**inputs)
        second = selective_scan(**inputs)
    torch.testing.assert_close(first.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, first)
    assert attempts == [1]  # tried once, then dropped for the process
    warnings = [r.getMessage() for r in caplog.records if "fake-triton" in r.getMessage()]
    assert len(warnings) == 1 and "C compiler" in warnings[0]
    assert "fake-triton" not in available_backends()
    with pytest.raises(ValueError, match="not available"):
        selective_scan(**inputs, backend="fake-triton")


def kernel_and_reference_grads(inputs: Inputs, upstream: torch.Tensor) -> tuple[list, list]:
    """Gradients of the present inputs: the kernel (float32) and the reference (float64)."""
    names = [k for k in NAMES if inputs[k] is not None]

    def grads(fn: Callable[..., torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        kw = {k: v.detach().to(dtype).clone().requires_grad_(k in names) if isinstance(v, torch.Tensor) else v
              for k, v in inputs.items()}
        torch.autograd.backward(fn(**kw), upstream.to(dtype))
        return [kw[k].grad.double() for k in names]

    return grads(lambda **kw: chunked_scan(**kw, use_kernel=True), torch.float32), grads(reference_scan, torch.float64)


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("batch,length,every", [(1, 1, 4), (2, 37, 8), (3, 64, 16), (2, 150, None)])
@pytest.mark.parametrize("large", [False, True], ids=["small-steps", "large-steps"])
def test_kernel_gradients_match_reference(option: str, batch: int, length: int, every: int | None, large: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The numba backward, every input, ragged chunks (L not a multiple of the checkpoint interval)."""
    from segmamba.scan import cpu_kernel

    if every is not None:
        monkeypatch.setattr(cpu_kernel, "CHECKPOINT_INTERVAL", every)
    inputs = make_inputs(batch, 5, 16, length, large=large, seed=length + batch, **OPTIONS[option])
    upstream = torch.randn(batch, 5, length, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got, expected = kernel_and_reference_grads(inputs, upstream)
    names = [k for k in NAMES if inputs[k] is not None]
    for name, g, e in zip(names, got, expected, strict=True):  # (A's is 0 for L = 1)
        assert (g - e).norm().item() <= 1e-4 * e.norm().item() + 1e-12, name


def test_kernel_gradients_on_network_layouts() -> None:
    """Transposed views in, a half-precision u: gradients still reach every leaf in its layout."""
    inputs = make_inputs(2, 6, 16, 90, seed=8)
    for key in ("delta", "z", "B", "C"):
        inputs[key] = inputs[key].transpose(1, 2).contiguous().transpose(1, 2)
    upstream = torch.randn(2, 6, 90, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got, expected = kernel_and_reference_grads(inputs, upstream)
    for name, g, e in zip(NAMES, got, expected, strict=True):
        assert g.shape == e.shape and ((g - e).norm() / e.norm()).item() <= 1e-4, name


def test_chunked_picks_kernel_for_cpu_float32_with_grad() -> None:
    inputs = cast(make_inputs(1, 2, 4, 9, seed=7), torch.float32)
    inputs["u"].requires_grad_(True)
    assert "KernelScan" in type(selective_scan(**inputs).grad_fn).__name__
    assert "KernelScan" not in type(chunked_scan(**inputs, use_kernel=False).grad_fn).__name__
    as64 = cast(inputs, torch.float64)
    as64["u"].requires_grad_(True)
    assert "KernelScan" not in type(chunked_scan(**as64).grad_fn).__name__
    with pytest.raises(RuntimeError, match="numba kernels"):
        chunked_scan(**as64, use_kernel=True)
    with torch.no_grad():
        assert not chunked_scan(**inputs, use_kernel=True).requires_grad


def test_training_step_gradients_kernel_vs_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """One loss.backward() of a tiny SegMamba: the kernel's parameter gradients are the torch path's."""
    from segmamba.model import SegMamba
    from segmamba.scan import cpu_kernel

    torch.manual_seed(0)
    model = SegMamba(in_chans=2, out_chans=3, feat_size=[8, 16, 32, 64], hidden_size=128, nslices=[16, 8, 4, 2])
    image = torch.randn(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    label = torch.randint(0, 3, (1, 32, 32, 32), generator=torch.Generator().manual_seed(4))

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(image), label).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with_kernel = grads()
    monkeypatch.setattr(cpu_kernel, "kernel_available", lambda: False)
    with_torch = grads()
    assert with_kernel.keys() == with_torch.keys()
    assert any(".mamba.A_s_log" in n for n in with_kernel)  # the encoder's scans are trained
    for name, g in with_kernel.items():
        ref = with_torch[name]
        assert torch.allclose(g, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item() + 1e-8), name
