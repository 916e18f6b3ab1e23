from __future__ import annotations

import numpy as np
import pytest
import torch

from vidact.flow.metrics import (
    angular_error,
    border_mask,
    channels_last,
    cosine_similarity,
    cosine_similarity_map,
    endpoint_error,
    endpoint_error_map,
)
from vidact.flow.visualize import color_wheel, flow_to_color, wheel_image


def _const(h: int, w: int, u: float, v: float) -> np.ndarray:
    f = np.empty((h, w, 2), np.float32)
    f[..., 0], f[..., 1] = u, v
    return f


def test_endpoint_error_and_mask() -> None:
    a = _const(4, 5, 3.0, 4.0)
    b = np.zeros_like(a)
    assert endpoint_error(a, b) == pytest.approx(5.0)
    b[0, 0] = (3.0, 4.0)
    mask = np.ones((4, 5), bool)
    mask[0, 0] = False
    assert endpoint_error_map(a, b)[0, 0] == 0.0
    assert endpoint_error(a, b, mask) == pytest.approx(5.0)
    assert endpoint_error(a, b) == pytest.approx(5.0 * 19 / 20)
    with pytest.raises(ValueError, match="no pixels"):
        endpoint_error(a, b, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="differ"):
        endpoint_error(a, b[:2])


def test_angular_error_and_cosine() -> None:
    right, down = _const(2, 2, 1.0, 0.0), _const(2, 2, 0.0, 1.0)
    assert angular_error(right, right) == pytest.approx(0.0, abs=1e-6)
    # (1, 0, 1) vs (0, 1, 1): cos = 1/2 -> 60 degrees
    assert angular_error(right, down) == pytest.approx(60.0)
    assert cosine_similarity(right, down) == pytest.approx(0.0)
    assert cosine_similarity(right, -right) == pytest.approx(-1.0)
    assert cosine_similarity(right * 5, right) == pytest.approx(1.0)
    zero = np.zeros_like(right)
    assert np.isnan(cosine_similarity_map(zero, right)).all()
    assert np.isnan(cosine_similarity(zero, right))


def test_border_mask_and_channels_last() -> None:
    m = border_mask(10, 12, 2)
    assert m.shape == (10, 12) and m.sum() == 6 * 8 and not m[1].any() and m[2, 2]
    assert not border_mask(4, 4, 2).any()
    t = torch.zeros(3, 2, 5, 7)
    t[:, 0] = 1.0
    cl = channels_last(t)
    assert cl.shape == (3, 5, 7, 2) and (cl[..., 0] == 1).all() and (cl[..., 1] == 0).all()
    assert endpoint_error(cl, np.zeros((3, 5, 7, 2)), border_mask(5, 7, 1)) == 1.0


def test_color_wheel_coding() -> None:
    wheel = color_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])
    # Zero flow is white; saturated motion to the right is pure red.
    assert (flow_to_color(np.zeros((3, 3, 2))) == 255).all()
    flow = np.zeros((1, 5, 2), np.float32)
    flow[0, :, 0] = [1.0, 0.0, -1.0, 0.0, 0.5]
    flow[0, :, 1] = [0.0, 1.0, 0.0, -1.0, 0.0]
    img = flow_to_color(flow)
    assert img.shape == (1, 5, 3) and img.dtype == np.uint8
    right, down, left, up, half = (tuple(int(c) for c in px) for px in img[0])
    assert right == (255, 0, 0)
    assert down[0] == 255 and 150 < down[1] < 255 and down[2] == 0  # orange-yellow
    assert left[0] == 0 and left[2] == 255  # cyan-blue
    assert up[2] == 255 and up[0] > 0 and up[1] == 0  # blue-violet
    assert half == (255, 127, 127)  # half magnitude: half-way to white
    # Beyond max_flow: full hue darkened to 75 %; NaN: black.
    flow[0, 0] = (4.0, 0.0)
    flow[0, 1] = (np.nan, 0.0)
    img = flow_to_color(flow, max_flow=1.0)
    assert tuple(int(c) for c in img[0, 0]) == (191, 0, 0)
    assert (img[0, 1] == 0).all()


def test_wheel_image_is_the_colour_of_each_vector_it_shows() -> None:
    size = 40
    key = wheel_image(size)
    axis = np.linspace(-1.0, 1.0, size)
    for row, v in enumerate(axis):  # the literal definition, one pixel at a time
        for col, u in enumerate(axis):
            expected = flow_to_color(np.array([[[u, v]]]), max_flow=1.0)[0, 0]
            if np.hypot(u, v) > 1.0:
                expected = np.full(3, 255, np.uint8)
            assert (key[row, col] == expected).all(), (row, col)
    middle = size // 2
    r, g, b = (int(x) for x in key[middle, -2])  # +x, just inside the unit circle: red
    assert r > 200 and g < 60 and b < 60
