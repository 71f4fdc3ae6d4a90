"""Smooth ECE and the smooth reliability curve (Blasiok & Nakkiran 2023, "Smooth ECE: principled
reliability diagrams via kernel smoothing"), in torch, with relplot 1.0.3's discretisation.

Convention (relplot's ``smECE`` / ``smECE_sigma`` with its default ``ReflectedGaussianKernel``; the tests
hold the two to 1e-6):

- Grid: ``m = max(2000, round(20 / sigma)) // 2 + 1`` points ``j / (m - 1)``. Each example deposits a
  weight linearly onto its two neighbouring grid points (``floor(f (m - 1))``, clipped to ``m - 2``, and the
  next), once with weight 1 (the mass) and once with weight ``f - y`` (the residual).
- Smoothing: both grids are convolved with the Gaussian density ``phi_sigma(t - 1/2)`` sampled at the
  ``m`` grid points ``t`` (no ``1 / (m - 1)`` factor: relplot keeps the raw density values), after
  reflecting the grid about both ends without repeating the end points (``[v_{m-1}..v_1, v, v_{m-2}..v_0]``);
  the kernel is truncated at half-width 1/2.
- Evaluation: the two smoothed grids are linearly interpolated at ``e = max(round(10 / sigma), 200)``
  points ``linspace(0, 1, e)``; with ``r`` the smoothed residual and ``d`` the smoothed mass plus 1e-4,
  ``smECE_sigma = sum |r| / sum d`` (relplot's ``sum |r / d| d / sum d``).
- Bandwidth: relplot's bisection for the fixed point ``sigma = smECE_sigma``: if ``1 >= smECE_1`` then
  ``sigma = 1``; otherwise 10 halvings of ``[0, 1]``, keeping the upper end where ``sigma >= smECE_sigma``
  (a sigma below 0.001 counts as too small without being evaluated); the result is ``smECE`` at that
  upper end. Each halving reads one value back to the host.

Inputs are widened to float64 first (relplot computes in the dtype it is given; pass it float64 to
compare). The grid deposit is a chunked pass over the N examples with three ``scatter_add_`` (no host sync);
every bandwidth that needs the same grid size reuses it, so the common case (sigma >= 0.01, m = 1001)
reads the data once, and the small bandwidths whose m - 1 divides 5120 share one pass (``_merge_cells``):
a near-calibrated 1M-example set takes 3 passes. Convolutions run as FFTs over the grid, one transform of
the data per grid size, batched over bootstrap resamples.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from audit.errors import AuditError
from audit.stats.calibration import _check_confidences

# relplot's constants: density floor of BaseKernelMixin.smooth, the bisection's eps and halvings, and the
# mesh of its reliability diagrams (config.plot_mesh_pts)
_DENSITY_EPS = 1e-4
_SIGMA_EPS = 1e-3
_HALVINGS = 10
MESH_POINTS = 200
# resampled examples materialised at once by smooth_reliability_band (as stats.MAX_CHUNK_ELEMENTS)
_BAND_CHUNK_ELEMENTS = 4_000_000
# examples per deposit pass on CPU: the chunk's buffers stay in L2 (sizes as measured: bench/RESULTS.md)
_CPU_CHUNK = 1 << 17
# the bisection's grids for sigma = 1/512, 1/256, 1/128, 10/1024 have m - 1 = 5120, 2560, 1280, 1024: all
# are merged from one pass at this size (_merge_cells) instead of one pass each
_FINE_GRID = 5121
# resamples per band chunk (2 groups each in one deposit buffer)
_BAND_MAX_RESAMPLES = 256


class SmoothReliability(NamedTuple):
    """A smooth reliability diagram; tensors float64 of shape (P,).

    Attributes:
        mesh: the P evaluation points ``linspace(0, 1, P)``.
        accuracy: kernel-smoothed accuracy ``E[y | f = t]`` at each point (relplot's ``mu``).
        density: kernel density of the confidences at each point (relplot's ``density``).
        sigma: the bandwidth used.
        smece: smooth ECE at that bandwidth, 0-dim float64.
    """

    mesh: torch.Tensor
    accuracy: torch.Tensor
    density: torch.Tensor
    sigma: float
    smece: torch.Tensor


def _linspace(n: int, device: torch.device) -> torch.Tensor:
    """numpy's ``linspace(0, 1, n)`` bit for bit: ``i * (1 / (n - 1))`` with the last point exactly 1."""
    t = torch.arange(n, dtype=torch.float64, device=device) * (1.0 / (n - 1))
    t[-1] = 1.0
    return t


def _grid_size(sigma: float) -> int:
    return max(2000, round(20 / sigma)) // 2 + 1


def _eval_size(sigma: float) -> int:
    return max(round(10 / sigma), 200)


def _cell_sums(confidences: torch.Tensor, groups: torch.Tensor, m: int, n_groups: int) -> torch.Tensor:
    """Per-cell sums for the linear deposit onto the grid ``j / (m - 1)``, per group of examples.

    Cell ``j`` holds the examples with ``floor(f (m - 1)) = j`` and ``frac = f (m - 1) - j``; since
    ``f = (j + frac) / (m - 1)``, the count and the sums of frac and frac^2 per cell determine every deposit
    (:func:`_grids`). Group g's cells start at ``2 g (m - 1)``, so a chunk of examples is a float64 copy, a
    multiply, a floor, a shift by the group and three ``scatter_add_`` into one buffer, through two chunk
    buffers reused by every chunk (fresh tensors per chunk cost page faults on a CPU). ``f = 1`` gets its
    own cell m - 1 with frac 0 (all its weight on the last point, as relplot's clip to m - 2 with frac 1).

    Args:
        confidences: (N,) floating f in [0, 1] (computed on in float64).
        groups: (N,) bool or int64 group index in [0, n_groups).
        m: grid size >= 3.
        n_groups: number of groups.

    Returns:
        (3, n_groups, m) float64: count, sum of frac, sum of frac^2 per (group, cell).
    """
    stride, n, device = 2 * (m - 1), confidences.numel(), confidences.device
    out = torch.zeros(3, n_groups * stride, dtype=torch.float64, device=device)
    step = max(1, min(n, n if confidences.is_cuda else _CPU_CHUNK))
    frac = torch.empty(step, dtype=torch.float64, device=device)
    cell = torch.empty(step, dtype=torch.int64, device=device)
    group = torch.empty(step, dtype=torch.int64, device=device)  # an int64 copy: adding bools casts through a temporary
    ones = torch.ones(1, dtype=torch.float64, device=device).expand(step)
    for start in range(0, n, step):
        size = min(step, n - start)
        f, c, g = frac[:size], cell[:size], group[:size]
        f.copy_(confidences[start:start + size]).mul_(float(m - 1))
        c.copy_(f)  # >= 0: truncation is the floor
        c.add_(g.copy_(groups[start:start + size]), alpha=stride)
        f.frac_()
        out[0].scatter_add_(0, c, ones[:size])
        out[1].scatter_add_(0, c, f)
        out[2].scatter_add_(0, c, f.square_())
    return out.view(3, n_groups, stride)[..., :m]


def _merge_cells(sums: torch.Tensor, r: int) -> torch.Tensor:
    """Cell sums of the grid of ``m = (M - 1) / r + 1`` points from those of the grid of M points.

    Coarse cell J is fine cells ``r J + a`` (a < r), where the coarse ``frac`` is ``(a + frac_fine) / r``:
    the count, ``sum frac = sum_a (a n_a + F_a) / r`` and ``sum frac^2 = sum_a (a^2 n_a + 2 a F_a + Q_a) / r^2``
    (no cancellation: every term is >= 0). The last fine cell (f = 1, frac 0) is the last coarse cell.

    Args:
        sums: (3, ..., M) count, sum of frac, sum of frac^2 per fine cell (:func:`_cell_sums`).
        r: cells merged, dividing M - 1.

    Returns:
        (3, ..., m) float64.
    """
    count, frac, frac_sq = (x[..., :-1].unflatten(-1, (-1, r)) for x in sums.unbind(0))  # (..., m - 1, r)
    a = torch.arange(r, dtype=torch.float64, device=sums.device)
    merged = torch.stack([count.sum(-1), (a * count + frac).sum(-1) / r,
                          (a * a * count + 2 * a * frac + frac_sq).sum(-1) / (r * r)])
    return torch.cat([merged, sums[..., -1:]], -1)


def _grids(sums: torch.Tensor) -> torch.Tensor:
    """(..., 3, m) deposited grids of the mass, the residual ``f - y`` and the label ``y``, from the
    (3, ..., 2, m) cell sums of :func:`_cell_sums` with the label as the last group index.

    An example in cell j with weight w puts ``w (1 - frac)`` on point j and ``w frac`` on point j + 1; with
    ``f = (j + frac) / (m - 1)``, the sums of ``f (1 - frac)`` and ``f frac`` over a cell are
    ``(j (count - F) + F - Q) / (m - 1)`` and ``(j F + Q) / (m - 1)`` (F, Q: sums of frac, frac^2).
    """
    m = sums.shape[-1]
    j = torch.arange(m, dtype=torch.float64, device=sums.device)
    hit, hit_frac = sums[0, ..., 1, :], sums[1, ..., 1, :]
    count, frac, frac_sq = sums.sum(-2).unbind(0)  # each (..., m), both labels
    conf_low = (j * (count - frac) + frac - frac_sq) / (m - 1)
    conf_high = (j * frac + frac_sq) / (m - 1)
    low = torch.stack([count - frac, conf_low - (hit - hit_frac), hit - hit_frac], -2)  # (..., 3, m)
    high = torch.stack([frac, conf_high - hit_frac, hit_frac], -2)
    low[..., 1:] += high[..., :-1]
    return low


def _fft_size(m: int) -> int:
    """Circular convolutions of n >= 2m - 1 points wrap the full one's 3m - 2 onto indices < m - 1 only,
    which :func:`_convolve` never reads."""
    return 1 << (2 * m - 2).bit_length()


def _spectrum(grid: torch.Tensor) -> torch.Tensor:
    """rfft of (..., m) grids reflected about both ends without repeating them, ``[v_{m-1}..v_1, v, v_{m-2}..v_0]``,
    cut to the 2m - 1 points the kernel's half-width (m - 1) / 2 reaches from the m outputs: ``[m // 2, 2m - 1 + m // 2)``."""
    m = grid.shape[-1]
    extended = torch.cat([grid[..., 1:].flip(-1), grid, grid[..., :-1].flip(-1)], -1)  # (..., 3m - 2)
    return torch.fft.rfft(extended[..., m // 2:m // 2 + 2 * m - 1], _fft_size(m))


def _convolve(spectrum: torch.Tensor, m: int, sigma: float) -> torch.Tensor:
    """relplot's ``ReflectedGaussianKernel.convolve`` of the grids whose :func:`_spectrum` is given: (..., m)."""
    t = _linspace(m, spectrum.device)
    kernel = torch.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    n_fft = _fft_size(m)
    full = torch.fft.irfft(spectrum * torch.fft.rfft(kernel, n_fft), n_fft)
    # np.convolve(ext, ker, "valid")[m // 2 : m // 2 + m] is the full convolution of the cut extension at [m - 1, 2m - 1)
    return full[..., m - 1:2 * m - 1]


def _reflected_convolution(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    return _convolve(_spectrum(grid), grid.shape[-1], sigma)


def _interpolate(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """relplot's ``interpolate``: the piecewise-linear function through ``(j / (m - 1), grid[..., j])`` at t."""
    m = grid.shape[-1]
    step = 1 / (m - 1)
    index = (t * (m - 1)).long().clamp_(0, m - 2)
    weight = (t - index.to(t.dtype) * step) / step  # an int64 tensor times a float would be float32
    return grid[..., index] * (1 - weight) + grid[..., index + 1] * weight


def _smece_at(spectrum: torch.Tensor, m: int, sigma: float) -> torch.Tensor:
    """smECE_sigma from the :func:`_spectrum` of the (..., 2, m) mass and residual grids: 0-dim (or (...,))."""
    smoothed = _interpolate(_linspace(_eval_size(sigma), spectrum.device), _convolve(spectrum, m, sigma))
    density = smoothed[..., 0, :] + _DENSITY_EPS
    return smoothed[..., 1, :].abs().sum(-1) / density.sum(-1)


class _SmoothECE:
    """smECE_sigma of one data set for any sigma, with the grid deposit cached per grid size."""

    def __init__(self, confidences: torch.Tensor, correct: torch.Tensor) -> None:
        self.confidences, self.correct = confidences, correct  # the label is the group of _cell_sums
        self._grids: dict[int, torch.Tensor] = {}
        self._values: dict[float, torch.Tensor] = {}
        self._fine: torch.Tensor | None = None
        self._spectra: dict[int, torch.Tensor] = {}

    def grids(self, sigma: float) -> torch.Tensor:
        m = _grid_size(sigma)
        if m not in self._grids:
            if m != _FINE_GRID and (_FINE_GRID - 1) % (m - 1) == 0:
                sums = _merge_cells(self.fine_sums(), (_FINE_GRID - 1) // (m - 1))
            else:
                sums = self.fine_sums() if m == _FINE_GRID else _cell_sums(self.confidences, self.correct, m, 2)
            self._grids[m] = _grids(sums)
        return self._grids[m]

    def fine_sums(self) -> torch.Tensor:
        if self._fine is None:
            self._fine = _cell_sums(self.confidences, self.correct, _FINE_GRID, 2)
        return self._fine

    def __call__(self, sigma: float) -> torch.Tensor:
        if sigma not in self._values:
            m = _grid_size(sigma)
            if m not in self._spectra:  # the bandwidths >= 0.01 share m = 1001 and its spectrum
                self._spectra[m] = _spectrum(self.grids(sigma)[:2])
            self._values[sigma] = _smece_at(self._spectra[m], m, sigma)
        return self._values[sigma]

    def fixed_point(self) -> float:
        """relplot's ``search_param(check_smooth_ece, start=1, refine=10)``."""
        def too_small(sigma: float) -> bool:
            return sigma < _SIGMA_EPS or sigma < float(self(sigma))

        if too_small(1.0):
            return 1.0
        low, high = 0.0, 1.0
        for _ in range(_HALVINGS):
            mid = (high + low) / 2
            if too_small(mid):
                low = mid
            else:
                high = mid
        return high


def _check_sigma(sigma: float) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 1:
        raise AuditError(f"expected sigma as a number in (0, 1], got {sigma!r}; pass e.g. sigma=0.05 or leave it None")


def smooth_ece(confidences: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Smooth ECE (Blasiok & Nakkiran 2023) at its self-consistent bandwidth ``sigma = smECE_sigma``.

    Module docstring: the reflected Gaussian kernel, relplot 1.0.3's grid and bisection.

    Args:
        confidences: (N,) floating confidences in [0, 1] (top-label: :func:`audit.stats.max_probability`).
        correct: (N,) bool, whether each prediction was right.

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        AuditError: on bad shapes or dtypes, N = 0, or confidences outside [0, 1] or NaN.

    Example:
        >>> round(float(smooth_ece(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([True, False, True, True]))), 4)
        0.1377
    """
    _check_confidences(confidences, correct)
    estimate = _SmoothECE(confidences, correct)
    return estimate(estimate.fixed_point())


def smooth_ece_bandwidth(confidences: torch.Tensor, correct: torch.Tensor) -> float:
    """The bandwidth sigma at which :func:`smooth_ece` evaluates (relplot's ``return_width``).

    Args and Raises: as :func:`smooth_ece`. Returns a Python float in (0, 1].
    """
    _check_confidences(confidences, correct)
    return _SmoothECE(confidences, correct).fixed_point()


def smooth_ece_sigma(confidences: torch.Tensor, correct: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth ECE at a fixed bandwidth ``sigma`` (relplot's ``smECE_sigma``).

    Args:
        confidences, correct: as :func:`smooth_ece`.
        sigma: kernel bandwidth in (0, 1].

    Returns:
        0-dim float64 tensor.

    Raises:
        AuditError: as :func:`smooth_ece`, or sigma outside (0, 1].

    Example:
        >>> round(float(smooth_ece_sigma(torch.tensor([0.9, 0.6]), torch.tensor([True, False]), 0.05)), 4)
        0.3487
    """
    _check_sigma(sigma)
    _check_confidences(confidences, correct)
    return _SmoothECE(confidences, correct)(float(sigma))


def _curve(grids: torch.Tensor, sigma: float, mesh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, density) on the mesh from (..., 3, m) grids; density normalised by the mass."""
    smoothed = _interpolate(mesh, _reflected_convolution(grids[..., 0::2, :], sigma))  # mass and label
    mass = smoothed[..., 0, :]
    accuracy = smoothed[..., 1, :] / (mass + _DENSITY_EPS)
    return accuracy, mass / grids[..., 0, :].sum(-1, keepdim=True)


def smooth_reliability(confidences: torch.Tensor, correct: torch.Tensor, sigma: float | None = None,
                       n_points: int = MESH_POINTS) -> SmoothReliability:
    """The smooth reliability curve and confidence density (relplot's ``prepare_rel_diagram`` without
    bagging: its ``KernelSmoother`` prediction and ``kde``).

    ``accuracy(t) = K*y(t) / (K*1(t) + 1e-4)`` and ``density(t) = K*1(t) / N``, with ``K*`` the reflected
    Gaussian smoothing of the module docstring (relplot's ``ys`` of ``smooth(f, y, t)`` and ``kde(f, t)``).

    Args:
        confidences, correct: as :func:`smooth_ece`.
        sigma: bandwidth; None takes the smooth ECE's own (:func:`smooth_ece_bandwidth`).
        n_points: mesh size P >= 2.

    Returns:
        :class:`SmoothReliability` on the confidences' device.

    Raises:
        AuditError: as :func:`smooth_ece_sigma`, or n_points < 2.

    Example:
        >>> curve = smooth_reliability(torch.tensor([0.2, 0.8]), torch.tensor([False, True]), n_points=3)
        >>> curve.mesh.tolist(), curve.sigma
        ([0.0, 0.5, 1.0], 0.181640625)
    """
    _check_confidences(confidences, correct)
    if sigma is not None:
        _check_sigma(sigma)
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise AuditError(f"expected n_points as an int >= 2, got {n_points!r}; pass e.g. n_points=200")
    estimate = _SmoothECE(confidences, correct)
    sigma = estimate.fixed_point() if sigma is None else float(sigma)
    mesh = _linspace(n_points, confidences.device)
    accuracy, density = _curve(estimate.grids(sigma), sigma, mesh)
    return SmoothReliability(mesh, accuracy, density, sigma, estimate(sigma))


def smooth_reliability_band(confidences: torch.Tensor, correct: torch.Tensor, sigma: float,
                            n_points: int = MESH_POINTS, n_resamples: int = 200, level: float = 0.95,
                            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pointwise percentile bootstrap band of the smooth reliability curve at a fixed bandwidth.

    Examples are resampled with replacement (``torch.randint`` from a generator on the inputs' device
    seeded with ``seed``, as :func:`audit.stats.bootstrap_ci`), the curve of each resample is computed as
    in :func:`smooth_reliability` at the given ``sigma`` (relplot also keeps one bandwidth for its bags),
    and the band is the ``(1 -+ level) / 2`` quantiles (linear interpolation) at each mesh point. Resamples
    are processed in chunks of about 4M materialised examples; the cost is O(n_resamples * N).

    Args:
        confidences, correct: as :func:`smooth_ece`.
        sigma: bandwidth in (0, 1], e.g. ``smooth_reliability(...).sigma``.
        n_points: mesh size P >= 2.
        n_resamples: bootstrap resamples >= 1.
        level: coverage in (0, 1).
        seed: generator seed.

    Returns:
        ``(lower, upper)``, each (P,) float64.

    Raises:
        AuditError: as :func:`smooth_reliability`, or n_resamples < 1, or level outside (0, 1).

    Example:
        >>> conf = torch.linspace(0.5, 1.0, 50)
        >>> low, high = smooth_reliability_band(conf, conf > 0.7, 0.1, n_points=5, n_resamples=20)
        >>> bool((low <= high).all())
        True
    """
    _check_sigma(sigma)
    _check_confidences(confidences, correct)
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise AuditError(f"expected n_points as an int >= 2, got {n_points!r}; pass e.g. n_points=200")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise AuditError(f"expected n_resamples as an int >= 1, got {n_resamples!r}; pass e.g. 200")
    if not 0.0 < level < 1.0:
        raise AuditError(f"expected level in (0, 1), got {level!r}; pass e.g. 0.95")
    sigma = float(sigma)
    f, label = confidences.to(torch.float64), correct.long()
    n, device, m = f.numel(), f.device, _grid_size(sigma)
    mesh = _linspace(n_points, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    chunk = max(1, min(_BAND_MAX_RESAMPLES, _BAND_CHUNK_ELEMENTS // n))
    curves = []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        index = torch.randint(0, n, (b, n), generator=generator, device=device)  # (B, N)
        group = label[index] + 2 * torch.arange(b, device=device)[:, None]  # (B, N): label within resample
        sums = _cell_sums(f[index].view(-1), group.view(-1), m, 2 * b).view(3, b, 2, m)
        accuracy, _ = _curve(_grids(sums), sigma, mesh)  # (B, P)
        curves.append(accuracy)
    alpha = (1.0 - level) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=device)
    low, high = torch.quantile(torch.cat(curves), q, dim=0)
    return low, high
