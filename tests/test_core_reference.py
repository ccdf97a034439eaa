"""The numpy oracle: known answers for masks, quantization parameters and SVD."""
import numpy as np
import pytest

from unicompress import reference as ref
from unicompress.reference import quantization as rq


@pytest.fixture
def w():
    return np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32)


def test_magnitude_mask_removes_exactly_the_smallest(w):
    keep = ref.magnitude_mask(w, 0.5)
    assert (~keep).sum() == w.size // 2
    assert np.abs(w[~keep]).max() <= np.abs(w[keep]).min()


def test_global_mask_uses_one_threshold():
    a, b = np.arange(1, 11, dtype=float).reshape(2, 5), 10 * np.arange(1, 11, dtype=float).reshape(2, 5)
    masks = ref.global_magnitude_masks({"a": a, "b": b}, 0.5)
    assert (~masks["a"]).sum() == 10 and (~masks["b"]).sum() == 0


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (1, 2)])
def test_nm_mask_every_group_has_n_zeros(w, n, m):
    keep = ref.nm_mask(w, n, m)
    groups = keep.reshape(-1, m)
    assert ((~groups).sum(axis=1) == n).all()
    absg = np.abs(w).reshape(-1, m)
    assert all(absg[i][~groups[i]].max() <= absg[i][groups[i]].min() for i in range(len(groups)))


def test_neuron_and_block_masks_are_whole(w):
    rows = ref.neuron_mask(w, 0.25, "l1")
    assert rows.shape == (16,) and (~rows).sum() == 4
    norms = np.abs(w).sum(1)
    assert norms[~rows].max() <= norms[rows].min()
    blocks = ref.block_mask(w, (4, 8), 0.5)
    tiles = blocks.reshape(4, 4, 4, 8)
    assert all(len(np.unique(tiles[i, :, j, :])) == 1 for i in range(4) for j in range(4))
    assert (~blocks).sum() == w.size // 2


def test_head_mask_scores_each_heads_four_slices():
    rng = np.random.default_rng(1)
    q, k, v, o = (rng.normal(size=(8, 8)) for _ in range(4))
    q[:2] = k[:2] = v[:2] = 0.0  # head 0 (rows 0..1 with 4 heads of dim 2) has only its O columns
    o[:, :2] *= 0.01
    keep = ref.head_mask(q, k, v, o, num_heads=4, sparsity=0.25)
    assert keep.tolist() == [False, True, True, True]
    assert ref.pruning.head_mask_to_rows(keep, 2).tolist() == [False, False] + [True] * 6


def test_polynomial_schedule_matches_zhu_gupta():
    assert ref.polynomial_sparsity(0, 0.8, 0.0, 0, 100) == 0.0
    assert ref.polynomial_sparsity(100, 0.8, 0.0, 0, 100) == pytest.approx(0.8)
    assert ref.polynomial_sparsity(50, 0.8, 0.0, 0, 100) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert ref.polynomial_sparsity(500, 0.8, 0.0, 0, 100) == pytest.approx(0.8)


def test_symmetric_int8_known_values():
    scale, zp = ref.linear_qparams(np.array([-1.27, 0.5]), bits=8, symmetric=True)
    assert scale == pytest.approx(0.01) and zp == 0
    assert ref.qrange(8, True) == (-127, 127) and ref.qrange(8, True, narrow_range=False) == (-128, 127)
    assert ref.qrange(4, False) == (0, 15)


def test_asymmetric_range_contains_zero_and_zero_is_exact():
    x = np.array([0.5, 1.0, 2.55])
    scale, zp = ref.linear_qparams(x, bits=8, symmetric=False)
    assert scale == pytest.approx(2.55 / 255) and zp == 0
    y = np.array([-1.0, 0.0, 3.0])
    s, z = ref.linear_qparams(y, 8, False)
    q = rq.quantize(np.array([0.0]), s, z, 0, 255)
    assert rq.dequantize(q, s, z)[0] == 0.0


@pytest.mark.parametrize("bits,symmetric,per_channel", [(8, True, True), (8, False, False), (4, True, True),
                                                       (4, False, True), (2, True, False)])
def test_quantize_weight_within_half_step_and_levels(w, bits, symmetric, per_channel):
    qt = ref.quantize_weight(w, bits, symmetric, per_channel)
    err = np.abs(qt.dequantize() - w)
    step = qt.scale[:, None] if per_channel else qt.scale
    assert (err <= step / 2 + 1e-6).all()
    levels = rq.levels_per_channel(qt.q, 0 if per_channel else None)
    assert (levels <= 2 ** bits).all()
    assert qt.q.min() >= qt.qmin and qt.q.max() <= qt.qmax


def test_percentile_and_mse_clip_outliers():
    x = np.concatenate([np.random.default_rng(0).normal(size=10000), [50.0]])
    lo_mm, hi_mm = ref.value_range(x, method="minmax")
    lo_p, hi_p = ref.value_range(x, method="percentile", percentile=99.9)
    lo_m, hi_m = ref.value_range(x, method="mse")
    assert hi_mm == 50.0 and hi_p < 5 and hi_m < 50.0


def test_log_quantization_within_the_log_step(w):
    lq = ref.log_quantize(w, bits=4, base=2.0)
    deq = lq.dequantize()
    nz = lq.sign != 0
    ratio = np.abs(deq[nz]) / np.abs(w[nz])
    assert (ratio >= 2 ** -0.5 - 1e-9).all() and (ratio <= 2 ** 0.5 + 1e-9).all()
    assert lq.q.max() <= 7 and np.unique(lq.q).size <= 8
    # values more than half a step below the smallest level flush to zero
    assert (np.abs(w[~nz]) <= lq.scale.repeat(w.shape[1]).reshape(w.shape)[~nz] * 2.0 ** -7.5 + 1e-12).all()


def test_truncated_svd_reaches_the_eckart_young_optimum(w):
    first, second = ref.truncated_svd(w, 5)
    assert first.shape == (5, 32) and second.shape == (16, 5)
    err = np.linalg.norm(second @ first - w)
    assert err == pytest.approx(ref.optimal_error(w, 5), rel=1e-5)
    s = np.linalg.svd(w, compute_uv=False)
    r = ref.rank_for_energy(s, 0.9)
    assert (s[:r] ** 2).sum() / (s ** 2).sum() >= 0.9 > (s[:r - 1] ** 2).sum() / (s ** 2).sum()
    assert ref.saves_parameters((16, 32), 5) and not ref.saves_parameters((16, 32), 11)
