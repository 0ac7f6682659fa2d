"""Vector quantization: nearest-code search, k-means, and the VQ-VAE quantizer layer.

The pure functions (``nearest``, ``kmeans``) are shared by the VQ-VAE's quantizer and by
``gmkit quantize`` (``gmkit.codebooks``): one implementation of "map each vector to its nearest
codebook entry" in the whole package. All of them work on (N, D) float tensors and are batched
(chunked matrix products, no per-vector Python loops).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 16384  # rows per distance block: 16k x 256 codes x 4 bytes = 16 MB


def nearest(x: torch.Tensor, codebook: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code for each row of ``x`` and the squared distance to it."""
    codebook = codebook.float()
    c_sq = codebook.pow(2).sum(1)
    idx, dist = [], []
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk].float()
        # argmin_j ||x - c_j||^2 = argmin_j (||c_j||^2 - 2 x.c_j): one fused matmul-add per block
        m, i = torch.addmm(c_sq[None], xs, codebook.t(), alpha=-2).min(1)
        idx.append(i)
        dist.append((m + xs.pow(2).sum(1)).clamp_min_(0))
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, device=x.device)
    return torch.cat(idx), torch.cat(dist)


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                   max_points: int = 20000, trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, section 5): each step draws
    ``trials`` candidates with probability proportional to the squared distance to the nearest
    centre chosen so far, and keeps the one that lowers the total squared distance most.

    Plain k-means++ (one candidate) often puts two seeds in one cluster and none in another,
    which Lloyd's iterations cannot undo when clusters are well separated; a few greedy trials
    (2 + ln k, the choice of scikit-learn's ``KMeans``) make that rare. Seeds from a random subset
    of at most ``max_points`` rows (the Lloyd iterations that follow use every row), so seeding
    costs O(max_points * k * trials * D).
    """
    x = x.float()
    n = x.shape[0]
    if n > max_points:
        x = x[torch.randperm(n, generator=generator, device="cpu")[:max_points].to(x.device)]
        n = max_points
    trials = max(1, trials if trials is not None else 2 + int(math.log(k)))
    x_sq = x.pow(2).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than codes: repeat points (their clusters stay empty)
            chosen.append(int(torch.randint(n, (1,), generator=generator)))
            continue
        cand = torch.multinomial(closest.cpu().double() / total, trials, replacement=True, generator=generator).to(x.device)
        # squared distances of every point to each candidate, (trials, n), by one matrix product
        d = (x_sq[cand][:, None] - 2 * x[cand] @ x.t() + x_sq[None]).clamp_min_(0)
        after = torch.minimum(closest[None], d)
        best = int(after.sum(1).argmin())
        chosen.append(int(cand[best]))
        closest = after[best]
    return x[torch.tensor(chosen, device=x.device)]


def kmeans(x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None,
           tol: float = 1e-4, init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding; returns (codebook (k, D), assignments (N,)).

    Empty clusters are restarted at the points currently worst served, so every code is used
    when there are at least ``k`` distinct points. Stops early when the mean squared error
    improves by less than ``tol`` (relative).
    """
    x = x.float()
    c = init.float().clone() if init is not None else kmeans_pp_init(x, k, generator)
    prev = math.inf
    idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(max(iters, 1)):
        idx, dist = nearest(x, c)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
        n_empty = int(empty.sum())
        if n_empty:
            worst = dist.topk(min(n_empty, x.shape[0])).indices
            c[empty.nonzero().squeeze(1)[:worst.numel()]] = x[worst]
        mse = float(dist.mean())
        if n_empty == 0 and prev - mse <= tol * max(prev, 1e-12):
            break
        prev = mse
    idx, _ = nearest(x, c)
    return c, idx


# -- the VQ-VAE layer ---------------------------------------------------------------------------

class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with an EMA codebook (van den Oord et al. 2017, appendix A.1;
    Razavi et al. 2019, VQ-VAE-2), k-means initialisation on the first training batch,
    dead-code restart, commitment loss and straight-through gradients.

    The codebook is a buffer, not a parameter: it moves by exponential moving averages of the
    encoder outputs assigned to each code,
        N_i <- g N_i + (1 - g) n_i,   m_i <- g m_i + (1 - g) sum_j z_ij,   e_i = m_i / N_i,
    with Laplace smoothing of N. Codes whose usage N_i falls below ``dead_threshold`` are moved
    onto random encoder outputs of the current batch.
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_threshold: float = 1.0, kmeans_iters: int = 10):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.dead_threshold, self.kmeans_iters = dead_threshold, kmeans_iters
        embed = torch.randn(num_codes, dim)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.long))

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Codes (...,) -> vectors (..., D)."""
        return F.embedding(idx, self.embed)

    @torch.no_grad()
    def _init(self, flat: torch.Tensor) -> None:
        c, idx = kmeans(flat, self.num_codes, self.kmeans_iters)
        counts = torch.bincount(idx, minlength=self.num_codes).float()
        self.embed.copy_(c)
        self.cluster_size.copy_(counts.clamp_min(self.dead_threshold))
        self.embed_sum.copy_(c * self.cluster_size[:, None])
        self.initialized.fill_(1)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot_sum = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=self.num_codes).float()
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(flat.shape[0], (n_dead,), device=flat.device)
            new = flat[pick] + 0.01 * flat.std() * torch.randn(n_dead, self.dim, device=flat.device)
            rows = dead.nonzero().squeeze(1)
            self.embed[rows] = new
            self.cluster_size[rows] = self.dead_threshold
            self.embed_sum[rows] = new * self.dead_threshold

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """z (B, D, H, W) -> (straight-through quantized z, codes (B, H, W), commitment loss, stats)."""
        b, d, h, w = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and int(self.initialized) == 0:
            self._init(flat.detach())
        idx, _ = nearest(flat.detach(), self.embed)
        if self.training:
            self._ema_update(flat.detach(), idx)
        q = self.lookup(idx).view(b, h, w, d).permute(0, 3, 1, 2).to(z.dtype)
        commit = F.mse_loss(z.float(), q.detach().float())  # pulls the encoder toward its codes
        z_q = z + (q - z).detach()  # straight-through estimator: identity gradient to z
        with torch.no_grad():
            p = torch.bincount(idx, minlength=self.num_codes).float() / idx.numel()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
            usage = (p > 0).float().mean()
        return z_q, idx.view(b, h, w), commit, {"perplexity": perplexity, "usage": usage}
