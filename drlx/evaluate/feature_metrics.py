"""Distances between two sets of feature vectors: Frechet distance, KID, precision and recall.

Shared by every feature space (Inception-v3 pool3 for FID, the digits classifier's penultimate
layer): each function takes (N, D) feature arrays (or their statistics) and works in float64
with numpy/scipy, blocked over rows so that 10,000 x 2048 features fit in memory.

Why the trace term is a sum of singular values: the Frechet distance needs tr((S1 S2)^{1/2}).
S1 S2 is not symmetric, and scipy.linalg.sqrtm on it (the textbook route) returns complex parts
and fails on singular products, hence the usual "add eps to the diagonal and retry" fallback,
which changes the answer. Here each covariance is written S = F F^T with a factor F of D rows:
the centred features / sqrt(N - 1) (D x N) when a set has at most D vectors, else V diag(w)^{1/2}
from the symmetric eigen-decomposition S = V diag(w) V^T (eigenvalues below the rounding level
dropped, so only the columns of the rank are kept). For S1 = F1 F1^T, S2 = F2 F2^T,
(F1^T F2)(F1^T F2)^T = F1^T S2 F1 has the non-zero eigenvalues of S2 F1 F1^T = S2 S1, so

    tr((S1 S2)^{1/2}) = tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = sum of the singular values of F1^T F2.

eigh and the SVD are backward stable, and the singular values come out with an absolute error
of about eps ||F1|| ||F2||, whereas square roots of the eigenvalues of S1^{1/2} S2 S1^{1/2} would
turn the rounding noise of every null or tiny direction into sqrt(eps) (FD(x, x) = -6e-6 instead
of 1e-13 for 30 vectors in 64 dimensions; 1e-5 for 3000 vectors in 512 dimensions with a
power-law spectrum). So rank-deficient covariances (fewer samples than dimensions, constant
features) need no offset. The factors also make the cost follow the rank: F1^T F2 is
(rank1 x rank2), and a set of N <= D vectors needs no D x D decomposition at all. A reference
set's factor is computed once (`FrechetReference`) for the many FIDs measured against it.
"""

from collections.abc import Iterator

import numpy as np
import scipy.linalg

_BLOCK_BYTES = 64 * 2**20  # float64 working memory per block of a pairwise matrix


def _features(x, name: str) -> np.ndarray:
    """Validate a (N, D) feature array with finite values; return it unchanged (any float)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if len(x) == 0:
        raise ValueError(f"{name}: no feature vectors")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: {int(np.sum(~np.isfinite(x)))} non-finite values (NaN or inf)")
    return x


def _same_dim(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{what}: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _BLOCK_BYTES // (8 * max(n_cols, 1)))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof = 1, as numpy's `np.cov` and the standard FID code) in float64.

    Two passes over blocks of rows (mean, then centred cross-products), so the float64 copy of
    a large float32 array is never made whole and no cancellation from raw second moments.

    Arguments:
        features: (N, D) array, N >= 2.

    Returns:
        mean (D,) and covariance (D, D), float64.
    """
    x = _features(features, "features")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"features: a covariance needs at least 2 vectors, got {n}")
    mean = np.zeros(d)
    for rows in _row_blocks(n, d):
        mean += np.sum(x[rows], axis=0, dtype=np.float64)
    mean /= n
    cov = np.zeros((d, d))
    for rows in _row_blocks(n, d):
        centred = x[rows].astype(np.float64) - mean
        cov += centred.T @ centred
    cov /= n - 1
    return mean, (cov + cov.T) / 2.0


def psd_factor(matrix) -> np.ndarray:
    """F (D, r) with F F^T = the symmetric PSD `matrix` up to rounding: V diag(w)^{1/2} of its
    eigen-decomposition, keeping the r eigenvalues above the rounding level of the largest
    (D eps lambda_max; the others, negative ones included, are 0).

    The symmetric root S^{1/2} is F V^T; only products F1^T F2 are needed here.
    """
    w, v = scipy.linalg.eigh(np.asarray(matrix, np.float64), driver="evd")
    tol = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max()), np.finfo(float).tiny)
    keep = w > tol
    return v[:, keep] * np.sqrt(w[keep])


def _feature_factor(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """A factor F (D, k) of the covariance of the rows of x (F F^T = cov): the centred features
    / sqrt(N - 1) when N <= D (no decomposition), else `psd_factor(cov)`."""
    n, d = x.shape
    if n > d:
        return psd_factor(cov)
    return (x.astype(np.float64) - mean).T / np.sqrt(n - 1)


def _trace_sqrt(factor1: np.ndarray, factor2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) for S1 = F1 F1^T, S2 = F2 F2^T: the singular values of F1^T F2."""
    if factor1.shape[1] == 0 or factor2.shape[1] == 0:
        return 0.0
    return float(np.sum(scipy.linalg.svdvals(factor1.T @ factor2)))


def trace_sqrt_product(cov1, cov2) -> float:
    """tr((S1 S2)^{1/2}) = tr((S1^{1/2} S2 S1^{1/2})^{1/2}) for symmetric PSD S1, S2: the sum
    of the singular values of F1^T F2 for factors S = F F^T (see the module docstring).

    Arguments:
        cov1, cov2: (D, D) covariance matrices.

    Returns:
        The trace as a float (>= 0).
    """
    return _trace_sqrt(psd_factor(cov1), psd_factor(cov2))


def _check_stats(mean, cov, name: str) -> tuple[np.ndarray, np.ndarray]:
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    d = mean.shape[0] if mean.ndim == 1 else -1
    if mean.ndim != 1 or cov.shape != (d, d):
        raise ValueError(
            f"{name}: expected a mean (D,) and a covariance (D, D), got {mean.shape} and "
            f"{cov.shape}"
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError(f"{name}: non-finite values in the statistics")
    if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-9 * max(1.0, float(np.abs(cov).max()))):
        raise ValueError(f"{name}: the covariance is not symmetric")
    return mean, cov


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """Frechet distance between N(m1, S1) and N(m2, S2), in float64 (the FID formula):

        ||m1 - m2||^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}).

    Not clipped: rounding can leave about -1e-12 relative for identical statistics.

    Arguments:
        mean1, cov1: mean (D,) and covariance (D, D) of the first set.
        mean2, cov2: the same for the second set.

    Returns:
        The distance as a float.
    """
    m1, s1 = _check_stats(mean1, cov1, "first statistics")
    m2, s2 = _check_stats(mean2, cov2, "second statistics")
    if m1.shape != m2.shape:
        raise ValueError(f"statistics of different dimensions ({m1.shape[0]} vs {m2.shape[0]})")
    return _frechet(m1 - m2, s1, s2, _trace_sqrt(psd_factor(s1), psd_factor(s2)))


def _frechet(diff: np.ndarray, cov1: np.ndarray, cov2: np.ndarray, trace_sqrt: float) -> float:
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def feature_frechet_distance(x, y) -> float:
    """Frechet distance between the Gaussian fits of two feature sets (see `frechet_distance`;
    a set of at most D vectors enters through its centred features, no D x D decomposition).

    Arguments:
        x: (N, D) features, N >= 2.
        y: (M, D) features, M >= 2.

    Returns:
        The distance as a float.
    """
    x, y = _features(x, "x"), _features(y, "y")
    _same_dim(x, y, "Frechet distance")
    (m1, s1), (m2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    trace_sqrt = _trace_sqrt(_feature_factor(x, m1, s1), _feature_factor(y, m2, s2))
    return _frechet(m1 - m2, s1, s2, trace_sqrt)


class FrechetReference:
    """Reference statistics (mean, covariance) with the covariance's factor computed once, for
    many Frechet distances against them (FID of all the samples and of each block).

    Arguments:
        mean, cov: mean (D,) and covariance (D, D) of the reference set.
    """

    def __init__(self, mean, cov):
        self.mean, self.cov = _check_stats(mean, cov, "reference statistics")
        self._factor: np.ndarray | None = None

    @property
    def factor(self) -> np.ndarray:
        """`psd_factor` of the covariance (one eigen-decomposition, on first use)."""
        if self._factor is None:
            self._factor = psd_factor(self.cov)
        return self._factor

    def distance(self, features) -> float:
        """Frechet distance between the Gaussian fit of `features` (N, D), N >= 2, and the
        reference; equal to `frechet_distance(*gaussian_statistics(features), mean, cov)` up
        to rounding."""
        x = _features(features, "features")
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"Frechet distance: feature dimensions differ ({x.shape[1]} vs {len(self.mean)})"
            )
        mean, cov = gaussian_statistics(x)
        trace_sqrt = _trace_sqrt(_feature_factor(x, mean, cov), self.factor)
        return _frechet(mean - self.mean, cov, self.cov, trace_sqrt)


def polynomial_kernel(x, y) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / d + 1)^3 between the rows of x and y, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x, y) -> float:
    """Unbiased MMD^2 with the polynomial kernel (the U-statistic KID averages):

        1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
        - 2/(mn) sum_{i,j} k(x_i, y_j).

    Arguments:
        x: (M, D) features, M >= 2.
        y: (N, D) features, N >= 2.

    Returns:
        The estimate (can be slightly negative when x and y share a law).
    """
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD^2 needs at least 2 vectors in each set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_distance(
    x, y, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) in any feature space: the unbiased
    polynomial-kernel MMD^2 on `num_subsets` pairs of random subsets (each drawn without
    replacement), their mean and standard deviation (ddof = 0), as the reference and
    torch-fidelity implementations report. As there (clean-fid), a subset larger than a set
    is cut to the set's size; with subset_size >= both sizes every subset is the whole set.

    Arguments:
        x: (M, D) features (e.g. of generated samples).
        y: (N, D) features (e.g. of reference data).
        num_subsets: number of subset pairs.
        subset_size: vectors per subset.
        seed: seed of the subset draws.

    Returns:
        (mean, std) of the subset estimates.
    """
    x, y = _features(x, "x"), _features(y, "y")
    _same_dim(x, y, "KID")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(
            f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}"
        )
    size = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            unbiased_mmd2(
                x[rng.choice(len(x), size, replace=False)],
                y[rng.choice(len(y), size, replace=False)],
            )
            for _ in range(num_subsets)
        ]
    )
    return float(values.mean()), float(values.std())


def _sq_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows of a and b, float64, clipped at 0."""
    a = a.astype(np.float64)
    sq = np.sum(a**2, axis=1)[:, None] + b_sq[None, :] - 2.0 * a @ b.T
    return np.maximum(sq, 0.0)


def knn_radii(x, k: int = 3) -> np.ndarray:
    """Squared distance from each row of x to its k-th nearest other row (the row itself, at
    distance 0, is not counted), blocked over rows.

    Arguments:
        x: (N, D) features, N > k.
        k: neighbourhood size.

    Returns:
        (N,) squared radii, float64.
    """
    x = _features(x, "x")
    if not 1 <= k < len(x):
        raise ValueError(f"k-NN radii need 1 <= k < N, got k = {k} with N = {len(x)}")
    x64 = x.astype(np.float64)
    x_sq = np.sum(x64**2, axis=1)
    out = np.empty(len(x))
    for rows in _row_blocks(len(x), len(x)):
        sq = _sq_distances(x64[rows], x64, x_sq)
        sq[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = 0.0
        out[rows] = np.partition(sq, k, axis=1)[:, k]  # index 0 is the row itself
    return out


def manifold_coverage(points, centres, radii) -> np.ndarray:
    """Whether each point lies in the union of balls around `centres` with squared `radii`."""
    points, centres = np.asarray(points), np.asarray(centres, np.float64)
    c_sq = np.sum(centres**2, axis=1)
    inside = np.empty(len(points), bool)
    for rows in _row_blocks(len(points), len(centres)):
        inside[rows] = np.any(_sq_distances(points[rows], centres, c_sq) <= radii[None], axis=1)
    return inside


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points, of radius the distance to
    the k-th nearest neighbour within the set. Precision = share of `fake` inside the real
    manifold (are samples realistic?); recall = share of `real` inside the fake manifold (is
    the data covered?).

    Arguments:
        real: (N, D) features of reference data, N > k.
        fake: (M, D) features of generated samples, M > k.
        k: neighbourhood size (3 in the paper).

    Returns:
        (precision, recall), each in [0, 1].
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    _same_dim(real, fake, "precision/recall")
    precision = manifold_coverage(fake, real, knn_radii(real, k)).mean()
    recall = manifold_coverage(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)
