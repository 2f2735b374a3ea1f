"""The thick-slice augmentation reproduces what resampling a 2D series to the 1 mm grid gives."""

from __future__ import annotations

import numpy as np
import torch

from segmamba.data import RandThickSlicesd, simulate_thick_slices


def test_a_step_edge_is_blurred_only_along_the_slice_axis() -> None:
    volume = np.zeros((40, 12, 12), dtype=np.float32)
    volume[20:] = 1.0
    thick = simulate_thick_slices(volume, axis=0, thickness=5.0, spacing=5.0, phase=2.0)
    profile = thick[:, 6, 6]
    assert profile[0] == 0.0 and profile[-1] == 1.0
    assert np.all(np.diff(profile) >= -1e-6)  # monotone: no ringing
    assert 4 <= int(((profile > 0.02) & (profile < 0.98)).sum()) <= 10  # a ramp a slice or two wide
    np.testing.assert_array_equal(thick[:, 0, :], thick[:, 11, :])  # nothing happens across the other axes


def test_slice_centres_hold_the_slab_average_and_linear_signal_is_kept() -> None:
    ramp = np.broadcast_to(np.arange(30, dtype=np.float32)[None, :, None], (6, 30, 6)).copy()
    thick = simulate_thick_slices(ramp, axis=1, thickness=3.0, spacing=4.0, phase=1.0)
    # A linear signal survives box averaging and linear interpolation between the slice centres.
    np.testing.assert_allclose(thick[:, 1:26], ramp[:, 1:26], atol=1e-4)
    assert np.all(thick[:, 0] == thick[:, 1])  # constant before the first slice centre


def test_transform_keeps_shape_type_and_label() -> None:
    transform = RandThickSlicesd("image", prob=1.0, channel_prob=1.0)
    transform.set_random_state(seed=3)
    image = torch.rand(4, 24, 24, 24)
    label = torch.zeros(1, 24, 24, 24)
    out = transform({"image": image, "label": label})
    assert isinstance(out["image"], torch.Tensor) and out["image"].shape == image.shape
    assert out["label"] is label
    assert not torch.equal(out["image"], image)
    assert out["image"].std() < image.std()  # averaging slabs of noise lowers its spread
    unchanged = RandThickSlicesd("image", prob=0.0)({"image": image, "label": label})
    assert unchanged["image"] is image
