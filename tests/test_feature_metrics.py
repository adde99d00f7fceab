"""Frechet distance, KID and precision/recall against closed forms and direct computations."""

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from drlx.evaluate import feature_metrics as fm


def _rng(seed=0):
    return np.random.default_rng(seed)


def _textbook_fd(x, y):
    """The standard FID code's formula with scipy.linalg.sqrtm on S1 S2, in float64."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2.0 * covmean))


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_gaussian_statistics_match_numpy_also_when_blocked(monkeypatch):
    x = _rng().standard_normal((301, 7)).astype(np.float32) * 3.0 + 5.0
    ref_mean, ref_cov = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)
    for block in (fm._BLOCK_BYTES, 8 * 7 * 13):  # one block, then blocks of 13 rows
        monkeypatch.setattr(fm, "_BLOCK_BYTES", block)
        mean, cov = fm.gaussian_statistics(x)
        assert mean.dtype == cov.dtype == np.float64
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
        np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)


@pytest.mark.parametrize("shape", [(400, 16), (30, 64)])  # full rank, then rank-deficient
def test_fd_of_a_set_with_itself_is_zero(shape):
    x = _rng(1).standard_normal(shape) * 2.0 + 1.0
    assert abs(fm.feature_frechet_distance(x, x)) < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fd_agrees_with_scipy_sqrtm(seed):
    rng = _rng(seed)
    d = 24
    x = rng.standard_normal((500, d))
    y = rng.standard_normal((300, d)) @ rng.standard_normal((d, d)) * 0.4 + 0.2
    ours, ref = fm.feature_frechet_distance(x, y), _textbook_fd(x, y)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fd_closed_form_2x2():
    # for a 2x2 PSD matrix M, tr M^{1/2} = sqrt(tr M + 2 sqrt(det M)), and
    # det(S1^{1/2} S2 S1^{1/2}) = det S1 det S2, tr(S1^{1/2} S2 S1^{1/2}) = tr(S1 S2)
    m1, m2 = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2.0 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    closed = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    assert fm.frechet_distance(m1, s1, m2, s2) == pytest.approx(closed, rel=1e-12)
    # and from samples of these Gaussians (sampling error only)
    rng = _rng(3)
    x = rng.multivariate_normal(m1, s1, 200_000)
    y = rng.multivariate_normal(m2, s2, 200_000)
    assert fm.feature_frechet_distance(x, y) == pytest.approx(closed, rel=0.02)


def test_fd_closed_form_rank_deficient_and_commuting():
    # diagonal covariances, some variances 0: FD = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = _rng(4)
    d = 50
    a, b = rng.uniform(0, 2, d), rng.uniform(0, 2, d)
    a[:20], b[10:25] = 0.0, 0.0
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fm.frechet_distance(m1, np.diag(a), m2, np.diag(b))
    assert got == pytest.approx(closed, rel=1e-9)
    # rotated by the same orthogonal matrix the covariances no longer look diagonal
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    got = fm.frechet_distance(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(closed, rel=1e-7)


def _features_with_covariance(rng, n, basis, variances, mean):
    """n vectors whose sample covariance (ddof = 1) is exactly basis diag(variances) basis^T and
    whose mean is `mean`: orthonormal centred columns, scaled (rank = number of non-zero
    variances, at most n - 1)."""
    k = len(variances)
    z = rng.standard_normal((n, k))
    z -= z.mean(axis=0)
    q, _ = np.linalg.qr(z)  # orthonormal columns, still orthogonal to the ones vector
    return (q * np.sqrt((n - 1) * np.asarray(variances))) @ basis[:, :k].T + mean


@pytest.mark.parametrize("sizes", [(12, 9), (12, 300), (300, 12), (300, 200)])
def test_fd_from_features_closed_form_low_and_full_rank(sizes):
    # commuting covariances U diag(a) U^T, U diag(b) U^T: FD = |m1 - m2|^2 + sum (sqrt a - sqrt
    # b)^2, with fewer vectors than dimensions (the centred features enter directly) or more
    rng = _rng(11)
    d = 40
    n1, n2 = sizes
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.zeros(d)
    b = np.zeros(d)
    a[: min(n1 - 1, d)] = rng.uniform(0.1, 3.0, min(n1 - 1, d))
    b[: min(n2 - 1, d)] = rng.uniform(0.1, 3.0, min(n2 - 1, d))
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    x = _features_with_covariance(rng, n1, basis, a[: min(n1 - 1, d)], m1)
    y = _features_with_covariance(rng, n2, basis, b[: min(n2 - 1, d)], m2)
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fm.feature_frechet_distance(x, y) == pytest.approx(closed, rel=1e-10)
    assert fm.feature_frechet_distance(y, x) == pytest.approx(closed, rel=1e-10)
    assert fm.FrechetReference(*fm.gaussian_statistics(y)).distance(x) == pytest.approx(
        closed, rel=1e-10
    )
    assert fm.frechet_distance(*fm.gaussian_statistics(x), *fm.gaussian_statistics(y)) == (
        pytest.approx(closed, rel=1e-10)
    )


@pytest.mark.parametrize("n", [5, 30, 200])  # rank 4 and 29 of 64 dimensions, then full rank
def test_fd_against_a_reference_agrees_with_sqrtm_of_symmetric_products(n):
    # independent route: R = S_ref^{1/2} by scipy's sqrtm (full rank), then tr((R S R)^{1/2})
    # from the eigenvalues of the symmetric R S R (square-root error ~ sqrt(eps) per null
    # direction: well inside the tolerance)
    rng = _rng(12)
    d = 64
    data = rng.standard_normal((500, d)) @ rng.standard_normal((d, d)) * 0.3
    ref = fm.FrechetReference(*fm.gaussian_statistics(data))
    for seed in (0, 1):
        x = _rng(20 + seed).standard_normal((n, d)) * 0.5 + 0.1
        mean, cov = fm.gaussian_statistics(x)
        root = np.real(scipy.linalg.sqrtm(ref.cov))
        w = np.linalg.eigvalsh(root @ cov @ root)
        tr_sqrt = np.sum(np.sqrt(np.clip(w, 0.0, None)))
        diff = mean - ref.mean
        want = diff @ diff + np.trace(cov) + np.trace(ref.cov) - 2.0 * tr_sqrt
        assert ref.distance(x) == pytest.approx(want, rel=1e-7)
        assert fm.feature_frechet_distance(x, data) == pytest.approx(want, rel=1e-7)
        assert fm.frechet_distance(mean, cov, ref.mean, ref.cov) == pytest.approx(want, rel=1e-7)
    assert abs(ref.distance(data)) < 1e-9 * np.trace(ref.cov)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        ref.distance(np.zeros((5, d + 1)))


def test_psd_factor_reconstructs_and_drops_the_null_space():
    rng = _rng(13)
    x = rng.standard_normal((7, 20))
    _, cov = fm.gaussian_statistics(x)
    f = fm.psd_factor(cov)
    assert f.shape == (20, 6)  # rank N - 1
    np.testing.assert_allclose(f @ f.T, cov, atol=1e-12)
    assert fm.psd_factor(np.zeros((4, 4))).shape == (4, 0)
    assert fm.frechet_distance(np.ones(4), np.zeros((4, 4)), np.zeros(4), np.eye(4)) == (
        pytest.approx(4.0 + 4.0, rel=1e-12)
    )


def test_fd_grows_monotonically_with_noise():
    rng = _rng(5)
    x = rng.standard_normal((1000, 10)) @ rng.standard_normal((10, 10))
    noise = rng.standard_normal(x.shape)
    fds = [fm.feature_frechet_distance(x, x + s * noise) for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert abs(fds[0]) < 1e-6
    assert np.all(np.diff(fds) > 0), fds


def test_fd_rejects_bad_input():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        fm.feature_frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        fm.feature_frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        fm.gaussian_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="not symmetric"):
        fm.frechet_distance(np.zeros(2), np.array([[1.0, 1.0], [0.0, 1.0]]), np.zeros(2), np.eye(2))


def _direct_mmd2(x, y):
    """The unbiased polynomial-kernel MMD^2 by explicit double loops."""
    d = x.shape[1]
    k = lambda u, v: (float(u @ v) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2.0 * kxy


def test_kid_whole_set_equals_direct_u_statistic():
    rng = _rng(6)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((25, 4)) + 0.5
    mean, std = fm.kernel_distance(x, y, num_subsets=3, subset_size=100)
    # subsets cut to min(30, 25) = 25: y whole, x a subset; with equal sizes, exact
    mean, std = fm.kernel_distance(x[:25], y, num_subsets=3, subset_size=25)
    assert mean == pytest.approx(_direct_mmd2(x[:25], y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_subset_estimator_is_unbiased():
    # subsets drawn without replacement from fixed sets: the expectation of the subset
    # U-statistic is the U-statistic of the whole sets
    rng = _rng(7)
    x, y = rng.standard_normal((40, 3)), rng.standard_normal((40, 3)) * 1.5 + 0.3
    target = _direct_mmd2(x, y)
    num = 20_000
    mean, std = fm.kernel_distance(x, y, num_subsets=num, subset_size=6, seed=1)
    stderr = std / np.sqrt(num)
    assert abs(mean - target) < 4 * stderr, (mean, target, stderr)
    # the biased (V-statistic, diagonal kept) version is far off at this subset size:
    # the check has the power to see a bias
    sub = 6
    kxx, kyy = fm.polynomial_kernel(x, x), fm.polynomial_kernel(y, y)
    diag_bias = (np.trace(kxx) / 40 - (kxx.sum() - np.trace(kxx)) / (40 * 39)) / sub
    diag_bias += (np.trace(kyy) / 40 - (kyy.sum() - np.trace(kyy)) / (40 * 39)) / sub
    assert abs(diag_bias) > 20 * stderr


def test_kid_near_zero_for_same_law_and_positive_otherwise():
    rng = _rng(8)
    d = 16
    x, y = rng.standard_normal((2000, d)), rng.standard_normal((2000, d))
    mean, std = fm.kernel_distance(x, y, num_subsets=50, subset_size=500)
    assert abs(mean) < std
    z = rng.standard_normal((2000, d)) * 1.3 + 0.2
    mean, std = fm.kernel_distance(x, z, num_subsets=50, subset_size=500)
    assert mean > 5 * std > 0


def _direct_precision_recall(real, fake, k):
    def radii(a):
        dist = cdist(a, a)
        return np.sort(dist, axis=1)[:, k]  # column 0 is the point itself

    r_real, r_fake = radii(real), radii(fake)
    precision = np.mean(np.any(cdist(fake, real) <= r_real[None], axis=1))
    recall = np.mean(np.any(cdist(real, fake) <= r_fake[None], axis=1))
    return precision, recall


def test_precision_recall_match_direct_computation_also_when_blocked(monkeypatch):
    rng = _rng(9)
    real = rng.standard_normal((300, 5))
    fake = rng.standard_normal((200, 5)) * 0.7 + np.array([2.5, 0, 0, 0, 0])
    ref = _direct_precision_recall(real, fake, 3)
    assert 0.05 < ref[0] < 0.95 and 0.05 < ref[1] < 0.95  # a non-trivial case
    for block in (fm._BLOCK_BYTES, 8 * 300 * 17):
        monkeypatch.setattr(fm, "_BLOCK_BYTES", block)
        assert fm.precision_recall(real, fake, k=3) == pytest.approx(ref, abs=1e-12)


def test_precision_recall_identical_then_moving_apart():
    rng = _rng(10)
    real = rng.standard_normal((500, 8))
    assert fm.precision_recall(real, real.copy()) == (1.0, 1.0)
    other = rng.standard_normal((500, 8))
    values = [fm.precision_recall(real, other + shift) for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
    precision, recall = np.array(values).T
    assert precision[0] > 0.6 and recall[0] > 0.6
    assert np.all(np.diff(precision) < 0) and np.all(np.diff(recall) < 0), values
    assert precision[-1] == recall[-1] == 0.0


def test_knn_radii_rejects_too_few_points():
    with pytest.raises(ValueError, match="1 <= k < N"):
        fm.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
