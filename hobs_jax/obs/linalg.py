"""The OBS engine's linear algebra: removing input rows of a layer (structured Optimal
Brain Surgeon), with the numerical safeguards every OBS in the library shares.

Notation (one consumer layer, one output column at a time; all columns share H):
``W`` [d, m] the kernel as [input rows, outputs] (:func:`hobs_jax.stats.layers.kernel_matrix`),
``H = (2/n) X^T X`` [d, d] (dampened), ``Hi = H^{-1}``. Removing the rows ``Q`` (all
rows of one input channel: its k*k taps for a conv) and re-optimizing the others costs,
in the layer-wise loss ``L(W') = 1/2 sum_j c_j (W'_j - W_j)^T H (W'_j - W_j)``,

    rho(Q)  = 1/2 sum_j c_j W_Qj^T [(Hi)_QQ]^{-1} W_Qj          (the OBS saliency)
    dW      = - Hi_{:,Q} [(Hi)_QQ]^{-1} W_Q                      (the compensation)
    Hi     <- Hi - Hi_{:,Q} [(Hi)_QQ]^{-1} Hi_{Q,:}              (downdate: Hi of H_KK)

with ``c_j`` optional per-output weights (``c_j = gamma_j^2 / (var_j + eps)`` measures
the error after the BatchNorm that follows the layer; 1 otherwise). Hassibi & Stork
(NIPS 1993) for one weight; OBC (Frantar & Alistarh, NeurIPS 2022) for the row-wise
downdate; the block (group) form is that of structured OBS as in ZipLM / oBERT (Kurtic
et al.) and OSSCAR (Meng et al., 2024) for input-channel removal. After removing a set
S by any sequence of such steps, the kept weights equal the least-squares solution
``W'_K = (H_KK)^{-1} H_{K,:} W`` (:func:`compensate`), because each step re-solves the
same quadratic on a smaller support.

Everything here is float64 numpy: the greedy loop is sequential with shapes that shrink,
matrices are at most a few thousand wide, and float32 downdates drift; jitting would
mean one compile per consumer shape for no gain on CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging

import numpy as np
import scipy.linalg

from hobs_jax.stats.hessian import dampen

log = logging.getLogger(__name__)

__all__ = ["Consumer", "blas_threads", "channel_rows", "compensate", "dampen", "greedy_path", "path_scores",
           "rank_scores", "reconstruction_error", "robust_inverse", "single_removal", "subtract_product"]

_BLAS_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                 ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                 ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                 ("openblas_set_num_threads", "openblas_get_num_threads"))


def _openblas_handles() -> list[tuple]:
    """(set, get) thread-count functions of every OpenBLAS loaded in this process
    (numpy's and scipy's wheels each bundle one), found in /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    out = []
    for lib in libs:
        try:
            h = ctypes.CDLL(lib)
        except OSError:
            continue
        for set_name, get_name in _BLAS_SYMBOLS:
            if hasattr(h, set_name) and hasattr(h, get_name):
                out.append((getattr(h, set_name), getattr(h, get_name)))
                break
    return out


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Limit OpenBLAS (numpy, scipy) to ``n`` threads inside the block (None: leave as is).

    On a shared 2-core machine, multithreaded OpenBLAS calls on matrices of a few hundred
    rows spin-wait for a descheduled thread (9x slower inverses measured; see
    docs/results/HISTORY.md). A no-op where no
    OpenBLAS is found (threadpoolctl does the same more generally; it is not a
    dependency)."""
    handles = _openblas_handles() if n else []
    old = [get() for _, get in handles]
    for set_, _ in handles:
        set_(int(n or 0))  # handles is empty when n is None or 0
    try:
        yield
    finally:
        for (set_, _), k in zip(handles, old):
            set_(int(k))


def robust_inverse(h: np.ndarray, damp: float, *, max_retries: int = 6, growth: float = 10.0,
                   max_cond: float = 1e10, name: str = "layer") -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Dampen ``h`` and invert it through a Cholesky factorization; when the factorization
    fails or the factor is ill-conditioned (``cond > max_cond``), multiply the dampening
    by ``growth`` (at most ``max_retries`` times, each logged), then give up with a
    one-line ``ValueError``.

    Dead inputs (zero diagonal) get diagonal 1 first (SparseGPT); the dampening is
    ``damp * mean(diag H)`` (:func:`dampen`). The channel OBS (:mod:`hobs_jax.obs.channel`)
    and the block OBS for Block-ELL (:mod:`hobs_jax.obs.block`) both invert through here.

    Returns:
      (H_damped [d, d], H_damped^{-1} [d, d], dampening used, dead mask [d]).
    """
    if not np.all(np.isfinite(h)):
        raise ValueError(f"{name}: the Hessian has NaN/Inf entries")
    lam = float(damp)
    for attempt in range(max_retries + 1):
        hd, dead = dampen(h, lam)
        try:
            c = scipy.linalg.cholesky(hd, lower=True)
            dg = np.diag(c)
            cond = float((dg.max() / dg.min()) ** 2) if dg.min() > 0 else np.inf
            if np.isfinite(cond) and cond <= max_cond:
                inv = scipy.linalg.cho_solve((c, True), np.eye(len(hd)))
                if np.all(np.isfinite(inv)):
                    return hd, (inv + inv.T) / 2, lam, dead
            why = f"condition ~{cond:.2e}"
        except np.linalg.LinAlgError:
            why = "not positive definite"
        if attempt == max_retries:
            break
        new = lam * growth if lam > 0 else 1e-4
        log.warning("%s: Hessian %s with dampening %.3g; retrying with %.3g", name, why, lam, new)
        lam = new
    raise ValueError(f"{name}: Hessian {why} even with dampening {lam:.3g} x mean(diag) after "
                     f"{max_retries} retries (calibration data degenerate?)")


def channel_rows(row_channel: np.ndarray, size: int, what: str = "layer") -> np.ndarray:
    """[size, q] row indices of each channel from ``row_channel`` [d] (the group channel
    at each input row, -1 for rows of no channel of the group)."""
    row_channel = np.asarray(row_channel)
    counts = np.bincount(row_channel[row_channel >= 0], minlength=size)
    if counts.size != size or not (counts == counts[0]).all() or counts[0] == 0:
        raise ValueError(f"{what}: channels occupy unequal numbers of input rows {sorted(set(counts.tolist()))}")
    order = np.argsort(row_channel, kind="stable")
    return order[len(row_channel) - size * counts[0]:].reshape(size, counts[0])


def subtract_product(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """``c -= a @ b`` in place: c [d, m], a [d, k], b [k, m] float64, k small.

    One BLAS dgemm with beta=1 writing into ``c`` (through its Fortran-ordered transpose
    view when ``c`` is C-ordered: ``c^T -= b^T a^T``), instead of numpy's ``a @ b``
    temporary plus a separate subtraction: the rank-k downdate of a large inverse Hessian
    is memory-bound, and this touches ``c`` once instead of three times (no d x d
    temporary). Falls back to numpy for other layouts/dtypes."""
    from scipy.linalg.blas import dgemm

    if c.dtype == np.float64 and a.dtype == np.float64 and b.dtype == np.float64:
        if c.flags.c_contiguous:
            dgemm(-1.0, b.T, a.T, beta=1.0, c=c.T, overwrite_c=True)
            return
        if c.flags.f_contiguous:
            dgemm(-1.0, a, b, beta=1.0, c=c, overwrite_c=True)
            return
    c -= a @ b


@dataclasses.dataclass
class Consumer:
    """Mutable working state of one consumer layer during greedy removal.

    Attributes:
      name: layer path (for messages).
      w: [d, m] current (compensated) weights, float64 (dead rows zeroed: they carry no
        signal on the calibration data, so removing them costs nothing).
      hinv: [d, d] inverse dampened Hessian of the rows still present (removed rows and
        columns are zero).
      rows: [C, q] input rows of each channel of the group being pruned.
      colw: [m] per-output weights c_j, or None (all 1).
      compensate: False -> removal without compensation (``w`` and ``hinv`` untouched
        except the removed rows; saliency 1/2 sum c_j W_Q^T H_QQ W_Q with ``h``).
      h: [d, d] the dampened Hessian (needed only when ``compensate`` is False).
    """

    name: str
    w: np.ndarray
    hinv: np.ndarray
    rows: np.ndarray
    colw: np.ndarray | None = None
    compensate: bool = True
    h: np.ndarray | None = None

    def _weighted(self, a: np.ndarray) -> np.ndarray:
        return a if self.colw is None else a * self.colw

    def saliency(self, alive: np.ndarray) -> np.ndarray:
        """[C] the loss of removing each channel alone now (inf where not ``alive``)."""
        out = np.full(len(self.rows), np.inf)
        idx = np.flatnonzero(alive)
        if not len(idx):
            return out
        r = self.rows[idx]  # [k, q]
        wq = self.w[r]  # [k, q, m]
        if self.compensate:
            b = self.hinv[r[:, :, None], r[:, None, :]]  # [k, q, q]
        else:
            assert self.h is not None  # required without compensation
            b = self.h[r[:, :, None], r[:, None, :]]
        if r.shape[1] == 1:
            if self.compensate:
                val = np.sum(self._weighted(wq[:, 0, :] ** 2), axis=1) / b[:, 0, 0]
            else:
                val = np.sum(self._weighted(wq[:, 0, :] ** 2), axis=1) * b[:, 0, 0]
        else:
            sol = np.linalg.solve(b, wq) if self.compensate else b @ wq
            val = np.sum(self._weighted(wq * sol), axis=(1, 2))
        out[idx] = 0.5 * val
        return out

    def remove(self, q: np.ndarray) -> float:
        """Remove rows ``q`` jointly (one OBS block step); returns the loss increase."""
        q = np.asarray(q)
        wq = self.w[q]
        if not self.compensate:
            assert self.h is not None  # required without compensation
            loss = 0.5 * float(np.sum(self._weighted(wq * (self.h[np.ix_(q, q)] @ wq))))
            self.w[q] = 0.0
            return loss
        u = self.hinv[:, q]  # [d, |Q|]
        b = u[q]  # [|Q|, |Q|]
        try:
            cf = scipy.linalg.cho_factor(b, lower=True)
        except np.linalg.LinAlgError:
            raise ValueError(f"{self.name}: the downdated inverse Hessian lost positive "
                             f"definiteness; raise the dampening") from None
        bw = scipy.linalg.cho_solve(cf, wq)
        loss = 0.5 * float(np.sum(self._weighted(wq * bw)))
        subtract_product(self.w, u, bw)
        subtract_product(self.hinv, u, scipy.linalg.cho_solve(cf, u.T))
        self.w[q] = 0.0
        self.hinv[q, :] = 0.0
        self.hinv[:, q] = 0.0
        return loss


def greedy_path(consumers: list[Consumer], n_remove: int, per_step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Remove ``n_remove`` channels of one group greedily: at each step the ``per_step``
    channels whose removal (with compensation of every consumer) costs least, summed over
    consumers; then downdate every consumer.

    Returns:
      order [n_remove] channels in removal order; losses [n_remove] the loss increase of
      each removal (a step removing several channels splits its loss equally).
    """
    size = len(consumers[0].rows)
    alive = np.ones(size, bool)
    order: list[int] = []
    losses: list[float] = []
    per_step = max(1, int(per_step))
    while len(order) < n_remove:
        s = np.zeros(size)
        for c in consumers:
            s += c.saliency(alive)
        k = min(per_step, n_remove - len(order))
        pick = np.argsort(s, kind="stable")[:k]
        pick = np.sort(pick) if k > 1 else pick
        loss = 0.0
        for c in consumers:
            loss += c.remove(c.rows[pick].reshape(-1))
        alive[pick] = False
        order.extend(int(i) for i in pick)
        losses.extend([loss / k] * k)
    return np.asarray(order, np.int64), np.asarray(losses, np.float64)


def single_removal(w: np.ndarray, hinv: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, float]:
    """Closed form for removing rows ``q``: (W + dW, rho) with dW = -Hi_{:,Q}
    [(Hi)_QQ]^{-1} W_Q and rho = 1/2 tr(W_Q^T [(Hi)_QQ]^{-1} W_Q) (reference for tests)."""
    b = hinv[np.ix_(q, q)]
    bw = np.linalg.solve(b, w[q])
    out = w - hinv[:, q] @ bw
    out[q] = 0.0
    return out, 0.5 * float(np.sum(w[q] * bw))


def compensate(w: np.ndarray, h: np.ndarray, removed: np.ndarray, *, name: str = "layer") -> np.ndarray:
    """Least-squares refit of ``w`` [d, m] on the kept rows: W'_K = (H_KK)^{-1} H_{K,:} W,
    W'_S = 0 (S = ``removed``). With the dampened H this is the composed OBS updates;
    with the undampened H it minimizes ||X W - X_K W'_K||."""
    d = h.shape[0]
    keep = np.setdiff1d(np.arange(d), removed)
    out = np.zeros_like(w, dtype=np.float64)
    if len(keep) == 0:
        return out
    try:
        cf = scipy.linalg.cho_factor(h[np.ix_(keep, keep)], lower=True)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}: kept-row Hessian is not positive definite; raise the dampening") from None
    out[keep] = scipy.linalg.cho_solve(cf, h[keep] @ w)
    return out


def reconstruction_error(w: np.ndarray, w_new: np.ndarray, xtx: np.ndarray) -> tuple[float, float]:
    """(||X W - X W'||^2, ||X W||^2) from the Gram X^T X (sums over rows and outputs)."""
    dw = w - w_new
    return float(np.sum(dw * (xtx @ dw))), float(np.sum(w * (xtx @ w)))


def path_scores(size: int, order: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """[size] global-allocation scores of a greedy removal path: the k-th removed channel
    gets max(losses[:k+1]) (a monotone "cost of pruning this group by k + 1 channels");
    channels the path never removed get +inf."""
    s = np.full(size, np.inf)
    if len(order):
        s[order] = np.maximum.accumulate(np.asarray(losses, np.float64))
    return s


def rank_scores(size: int, order: np.ndarray) -> np.ndarray:
    """[size] plan scores of a removal path: removal rank (first removed lowest),
    never-removed highest (``size``)."""
    s = np.full(size, float(size), np.float64)
    s[order] = np.arange(len(order), dtype=np.float64)
    return s
