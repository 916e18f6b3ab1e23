from __future__ import annotations

import shutil
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from tests.flow._pairs import field_pair, translation_pair
from vidact.flow.metrics import border_mask, endpoint_error
from vidact.flow.tvl1 import TVL1Params, _tvl1_steps, median_filter, tvl1_flow

CPU = torch.device("cpu")


def _opencv_solver() -> Any:
    """OpenCV's CPU TV-L1 with its defaults."""
    return cv2.optflow.DualTVL1OpticalFlow_create()  # type: ignore[attr-defined]


def _flow(first: np.ndarray, second: np.ndarray, **kwargs: object) -> np.ndarray:
    i0 = torch.from_numpy(first).float()
    i1 = torch.from_numpy(second).float()
    out = tvl1_flow(i0, i1, device=CPU, **kwargs)  # type: ignore[arg-type]
    return out.permute(*range(out.dim() - 3), -2, -1, -3).numpy()


def test_presets_match_opencv_getters() -> None:
    solver = _opencv_solver()
    cpu = TVL1Params.opencv_cpu()
    assert cpu.tau == pytest.approx(solver.getTau())
    assert cpu.lambda_ == pytest.approx(solver.getLambda())
    assert cpu.theta == pytest.approx(solver.getTheta())
    assert cpu.n_scales == solver.getScalesNumber()
    assert cpu.n_warps == solver.getWarpingsNumber()
    assert cpu.epsilon == pytest.approx(solver.getEpsilon())
    assert cpu.inner_iterations == solver.getInnerIterations()
    assert cpu.outer_iterations == solver.getOuterIterations()
    assert cpu.scale_step == pytest.approx(solver.getScaleStep())
    assert cpu.median_filtering == solver.getMedianFiltering()
    assert cpu.gamma == pytest.approx(solver.getGamma())
    cuda = TVL1Params.opencv_cuda()
    assert cuda.median_filtering == 1
    assert cuda.inner_iterations * cuda.outer_iterations == 300
    assert (cuda.tau, cuda.lambda_, cuda.theta) == (cpu.tau, cpu.lambda_, cpu.theta)


@pytest.mark.parametrize(
    "changes",
    [{"tau": 0.0}, {"scale_step": 1.0}, {"median_filtering": 4}, {"interpolation": "nearest"}],
)
def test_invalid_params_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes)).rstrip("_")):
        TVL1Params().replace(**changes)


@pytest.mark.parametrize(("dx", "dy"), [(1.5, -0.75), (-2.25, 1.25)])
def test_subpixel_translation_direction_and_magnitude(dx: float, dy: float) -> None:
    first, second, _ = translation_pair(64, dx, dy, seed=3)
    flow = _flow(first, second)
    inner = flow[8:-8, 8:-8]
    med_x, med_y = np.median(inner[..., 0]), np.median(inner[..., 1])
    assert np.sign(med_x) == np.sign(dx) and np.sign(med_y) == np.sign(dy)
    assert med_x == pytest.approx(dx, abs=0.05)
    assert med_y == pytest.approx(dy, abs=0.05)
    assert np.abs(inner - np.array([dx, dy])).max() < 0.5


def test_epe_within_10_percent_of_opencv_on_known_fields() -> None:
    """Same pairs, same parameters: torch's EPE <= 1.1 x OpenCV CPU's."""
    size, mask = 80, border_mask(80, 80, 6)
    pairs = [field_pair(size, magnitude=3.0, seed=s) for s in range(3)]
    first = np.stack([p[0] for p in pairs])
    second = np.stack([p[1] for p in pairs])
    ours = _flow(first, second)
    solver = _opencv_solver()
    epe_torch, epe_cv = [], []
    for k, (a, b, truth) in enumerate(pairs):
        epe_torch.append(endpoint_error(ours[k], truth, mask))
        epe_cv.append(endpoint_error(solver.calc(a, b, None), truth, mask))
    # Both actually solve the problem (the field moves pixels by up to 3 px) ...
    assert max(epe_cv) < 0.5
    # ... and torch is as accurate as OpenCV (within 10 %) on the same pairs.
    assert np.mean(epe_torch) <= 1.10 * np.mean(epe_cv), (epe_torch, epe_cv)


def test_early_stopping_per_pair_in_a_batch() -> None:
    """An identical pair stops after one iteration per warp and stays exactly zero, while
    the moving pair in the same batch keeps iterating, to the same result as alone."""
    still = translation_pair(48, 0.0, 0.0, seed=1)[1]
    moving0, moving1, _ = translation_pair(48, 1.25, -0.5, seed=2)
    i0 = torch.from_numpy(np.stack([still, moving0])).float()
    i1 = torch.from_numpy(np.stack([still, moving1])).float()
    params = TVL1Params()
    stats: dict[str, np.ndarray] = {}
    flow = tvl1_flow(i0, i1, params, device=CPU, stats=stats)
    levels = 5  # 48 px: 48, 38, 31, 25, 20 -- all >= 16 px
    assert stats["iterations"][0] == levels * params.n_warps
    assert stats["iterations"][1] > 5 * stats["iterations"][0]
    # Not bit-exact 0: grid_sample's normalised coordinates move samples by ~1e-6 px.
    assert flow[0].abs().max().item() < 1e-3
    alone = tvl1_flow(i0[1:], i1[1:], params, device=CPU)
    torch.testing.assert_close(flow[1:], alone, atol=1e-5, rtol=0)


def _reference_step(
    u: torch.Tensor,
    p: torch.Tensor,
    g: torch.Tensor,
    rho_c: torch.Tensor,
    l_t: float,
    theta: float,
    taut: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One TV-L1 iteration written plainly, case by case (representation-flow paper, eqs. 2-6)."""
    c = u.shape[1]
    grad2 = (g * g).sum(1, keepdim=True)
    rho = rho_c + (g * u).sum(1, keepdim=True)
    v = torch.where(
        rho < -l_t * grad2,
        u + l_t * g,
        torch.where(rho > l_t * grad2, u - l_t * g, u - rho * g / grad2),
    )
    px, py = p[:, :c], p[:, c:]
    div = torch.zeros_like(u)
    div += px
    div[..., :, 1:] -= px[..., :, :-1]
    div += py
    div[..., 1:, :] -= py[..., :-1, :]
    u_new = v + theta * div
    ux = torch.zeros_like(u)
    uy = torch.zeros_like(u)
    ux[..., :, :-1] = u_new[..., :, 1:] - u_new[..., :, :-1]
    uy[..., :-1, :] = u_new[..., 1:, :] - u_new[..., :-1, :]
    norm = 1 + taut * torch.sqrt(ux**2 + uy**2)
    p_new = torch.cat([(px + taut * ux) / norm, (py + taut * uy) / norm], dim=1)
    return u_new, p_new


def test_fused_iteration_matches_plain_formulas() -> None:
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = 2, 2, 9, 11
    u = torch.randn(b, c, h, w, generator=gen)
    p = torch.randn(b, 2 * c, h, w, generator=gen) * 0.3
    p[:, :c, :, -1] = 0  # the dual variables' invariant: 0 at the last column / row
    p[:, c:, -1, :] = 0
    g = torch.randn(b, c, h, w, generator=gen) * 5
    rho_c = torch.randn(b, 1, h, w, generator=gen) * 10
    inv_g2 = 1.0 / (g * g).sum(1, keepdim=True)
    l_t, theta, taut = 0.045, 0.3, 0.25 / 0.3
    ref_u, ref_p = _reference_step(u, p, g, rho_c, l_t, theta, taut)
    for _ in range(2):  # a second step from the reference state
        ref_u, ref_p = _reference_step(ref_u, ref_p, g, rho_c, l_t, theta, taut)
    got_u, got_p, running, applied = _tvl1_steps(
        u, p, g, rho_c, inv_g2, None, 1, l_t, theta, taut, 1e-4
    )
    got_u, got_p, running, applied = _tvl1_steps(
        got_u, got_p, g, rho_c, inv_g2, running, 2, l_t, theta, taut, 1e-4
    )
    torch.testing.assert_close(got_u, ref_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_p, ref_p, atol=1e-5, rtol=1e-5)
    assert running.all() and applied.tolist() == [2, 2]


def test_masked_steps_give_the_same_flow() -> None:
    """Checking convergence every k steps (converged pairs frozen by the mask in between)
    gives the same result as checking after every step."""
    a = field_pair(40, 2.0, seed=5)
    b = translation_pair(40, 0.0, 0.0, seed=6)
    i0 = torch.from_numpy(np.stack([a[0], b[0]])).float()
    i1 = torch.from_numpy(np.stack([a[1], b[1]])).float()
    s1: dict[str, np.ndarray] = {}
    s7: dict[str, np.ndarray] = {}
    every1 = tvl1_flow(i0, i1, device=CPU, check_every=1, stats=s1)
    every7 = tvl1_flow(i0, i1, device=CPU, check_every=7, stats=s7)
    torch.testing.assert_close(every1, every7, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(s1["iterations"], s7["iterations"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs g++")
def test_compiled_iterations_match_eager() -> None:
    a = field_pair(32, 2.0, seed=8)
    b = translation_pair(32, 0.0, 0.0, seed=9)
    i0 = torch.from_numpy(np.stack([a[0], b[0]])).float()
    i1 = torch.from_numpy(np.stack([a[1], b[1]])).float()
    eager = tvl1_flow(i0, i1, device=CPU)
    compiled = tvl1_flow(i0, i1, device=CPU, compile=True, check_every=4)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


def test_cuda_preset_bilinear_and_single_pair_shapes() -> None:
    first, second, _ = translation_pair(40, 1.0, 0.5, seed=4)
    params = TVL1Params.opencv_cuda().replace(interpolation="bilinear")
    flow = tvl1_flow(torch.from_numpy(first).float(), torch.from_numpy(second).float(), params)
    assert flow.shape == (2, 40, 40) and flow.dtype == torch.float32
    inner = flow[:, 6:-6, 6:-6]
    assert inner[0].median().item() == pytest.approx(1.0, abs=0.1)
    assert inner[1].median().item() == pytest.approx(0.5, abs=0.1)


def test_illumination_term_gamma() -> None:
    """With gamma > 0 a global brightness change is absorbed by the illumination term,
    as much as OpenCV's gamma option absorbs it."""
    first, second, truth = translation_pair(48, 1.0, -1.0, seed=7)
    brighter = np.clip(second.astype(np.float32) + 12.0, 0, 255).astype(np.uint8)
    mask = border_mask(48, 48, 6)
    plain = endpoint_error(_flow(first, brighter), truth, mask)
    ours = endpoint_error(_flow(first, brighter, params=TVL1Params(gamma=0.3)), truth, mask)
    solver = cv2.optflow.DualTVL1OpticalFlow_create(gamma=0.3)  # type: ignore[attr-defined]
    theirs = endpoint_error(solver.calc(first, brighter, None), truth, mask)
    assert ours < 0.5 * plain
    assert ours <= 1.10 * theirs, (ours, theirs)


@pytest.mark.parametrize("size", [3, 5])
def test_median_filter_torch_path_matches_opencv(size: int) -> None:
    rng = np.random.default_rng(0)
    planes = rng.standard_normal((2, 2, 17, 23)).astype(np.float32)
    fast = median_filter(torch.from_numpy(planes), size)  # float32 on CPU: OpenCV
    slow = median_filter(torch.from_numpy(planes).double(), size)  # unfold + median
    expected = np.stack([[cv2.medianBlur(p, size) for p in pair] for pair in planes])
    np.testing.assert_allclose(fast.numpy(), expected)
    np.testing.assert_allclose(slow.numpy(), expected, atol=1e-6)


def test_rejects_mismatched_or_tiny_frames() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        tvl1_flow(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="at least 3x3"):
        tvl1_flow(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
