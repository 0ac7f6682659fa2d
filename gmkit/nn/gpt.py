"""A decoder-only transformer over token sequences, with a key/value cache for sampling.

    p(k) = prod_i p(k_i | k_<i, c)          (Vaswani et al. 2017; GPT, Radford et al. 2018)

Each layer is pre-norm: causal self-attention, optional cross-attention to a condition ``c`` (a
text encoder's per-token states, as in Parti's encoder-decoder, Yu et al. 2022), and a GELU MLP,
each residual. The tokens are a VQ code map in raster order, preceded by a start token.

Sampling one token at a time with the plain forward recomputes every earlier position at every
step: O(L^2) positions for L tokens. ``KVCache`` keeps each layer's keys and values (and the
condition's, computed once), so step i only computes position i: O(L) positions in total
(each step still attends over the i cached keys).

Attribute names follow ``torch.nn.TransformerEncoderLayer`` (``self_attn.in_proj_weight``,
``self_attn.out_proj``, ``linear1``, ``linear2``, ``norm1``, ``norm2``) under ``blocks.layers``,
the layout of ``nn.TransformerEncoder``: the VQ-VAE prior was trained with those modules, so its
checkpoints load here unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Per layer: keys and values of the positions seen so far (preallocated to ``length``), and the
    condition's keys and values (computed at the first call, reused after)."""

    def __init__(self, layers: int, max_length: int):
        self.max_length = max_length
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers
        self.context: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        self.length = 0  # positions cached so far


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge(y: torch.Tensor) -> torch.Tensor:
    b, h, n, d = y.shape
    return y.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention; q, k, v from one packed projection (nn.MultiheadAttention's)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        q, k, v = (_heads(t, self.heads) for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1))
        n = x.shape[1]
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1)
        else:
            start = cache.length
            if cache.k[layer] is None:  # first call: room for the whole sequence
                shape = (k.shape[0], k.shape[1], cache.max_length, k.shape[3])
                cache.k[layer], cache.v[layer] = k.new_empty(shape), v.new_empty(shape)
            cache.k[layer][:, :, start:start + n] = k
            cache.v[layer][:, :, start:start + n] = v
            k, v = cache.k[layer][:, :, :start + n], cache.v[layer][:, :, :start + n]
            mask = None
            if n > 1:  # new query j sits at start + j and sees keys 0 .. start + j
                mask = torch.ones(n, start + n, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(_merge(y))


class CrossAttention(nn.Module):
    """Attention of the tokens to the condition's states; ``mask`` (B, M) marks the real ones."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        kv = cache.context[layer] if cache is not None else None
        if kv is None:
            kv = (_heads(self.to_k(context), self.heads), _heads(self.to_v(context), self.heads))
            if cache is not None:
                cache.context[layer] = kv
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        y = F.scaled_dot_product_attention(_heads(self.to_q(x), self.heads), *kv, attn_mask=attn_mask)
        return self.out_proj(_merge(y))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        if context_dim:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = CrossAttention(dim, heads, context_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)  # on each residual branch, in training only

    def forward(self, x, context=None, mask=None, cache: KVCache | None = None, layer: int = 0):
        x = x + self.drop(self.self_attn(self.norm1(x), cache, layer))
        if context is not None:
            x = x + self.drop(self.cross_attn(self.norm_cross(x), context, mask, cache, layer))
        return x + self.drop(self.linear2(F.gelu(self.linear1(self.norm2(x)))))


class GPT(nn.Module):
    """Tokens 0..vocab-1 (the id ``vocab`` is the start token) at up to ``length`` positions."""

    def __init__(self, vocab: int, length: int, dim: int, layers: int, heads: int, context_dim: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.vocab, self.length, self.context_dim = vocab, length, context_dim
        self.tok = nn.Embedding(vocab + 1, dim)
        self.pos = nn.Parameter(torch.zeros(length, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Module()  # blocks.layers.i: nn.TransformerEncoder's key names
        self.blocks.layers = nn.ModuleList(Block(dim, heads, context_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks.layers), self.length)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, n, vocab) for positions ``start .. start + n - 1`` given the tokens before each.

        Without a cache, ``tokens`` (B, n) are positions 0..n-1 and the input is shifted right behind
        the start token (teacher forcing). With a cache, ``tokens`` are the *inputs* of the next n
        positions (the start token, then the previous position's token) and the cache advances by n.
        """
        b, n = tokens.shape
        if cache is None:
            start_tok = torch.full((b, 1), self.vocab, dtype=torch.long, device=tokens.device)
            inp, first = torch.cat([start_tok, tokens[:, :-1]], 1), 0
        else:
            inp, first = tokens, cache.length
        h = self.tok(inp) + self.pos[first:first + n]
        for i, block in enumerate(self.blocks.layers):
            h = block(h, context, mask, cache, i)
        if cache is not None:
            cache.length += n
        return self.head(self.norm(h))


# -- sampling -------------------------------------------------------------------------------------

def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities (B, V) after temperature, top-k and nucleus (top-p, Holtzman et al. 2020) filtering.

    Temperature 0 puts all mass on the most likely token (greedy decoding).
    """
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        # Keep the most likely tokens until their mass reaches top_p (the token crossing it included).
        sorted_p, order = probs.sort(-1, descending=True)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    return probs


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: token j with cdf_{j-1} <= u * total < cdf_j, one uniform ``u`` (B,) per row, so
    a row's token depends only on its own uniform."""
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]).contiguous()).squeeze(1).clamp_max(probs.shape[-1] - 1)


@torch.inference_mode()
def sample_tokens(model: GPT, u: torch.Tensor, conds: list[tuple], guidance: float = 1.0, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, known: torch.Tensor | None = None,
                  keep: torch.Tensor | None = None, use_cache: bool = True, callback=None) -> torch.Tensor:
    """Tokens (B, L) drawn position by position; ``u`` (B, L) holds one uniform per image and position.

    ``conds`` is ``[(context, mask)]`` for one branch, or ``[cond, uncond]`` for classifier-free guidance
    (Ho & Salimans 2022; for autoregressive tokens, Gafni et al. 2022 and Parti):
        logits = logits_uncond + guidance * (logits_cond - logits_uncond)
    Guidance 1 reads the conditional branch alone, guidance 0 the unconditional one alone, so each
    equals the plain model. ``known``/``keep`` (B, L): where ``keep`` is True the token is given
    (masked completion), not drawn; it still feeds the positions after it.
    """
    b, length = u.shape
    if len(conds) == 2 and guidance == 1.0:
        conds = conds[:1]
    elif len(conds) == 2 and guidance == 0.0:
        conds = conds[1:]
    branches = len(conds)
    context = mask = None
    if conds[0][0] is not None:  # both branches in one batch: their states are padded alike
        context = torch.cat([c for c, _ in conds])
        mask = torch.cat([m for _, m in conds])
    tokens = torch.zeros(b, length, dtype=torch.long, device=u.device)
    cache = model.new_cache() if use_cache else None
    start = torch.full((b * branches, 1), model.vocab, dtype=torch.long, device=u.device)
    for i in range(length):
        if use_cache:
            inp = start if i == 0 else tokens[:, i - 1:i].repeat(branches, 1)
            logits = model(inp, context, mask, cache)[:, -1]
        else:
            logits = model(tokens[:, :i + 1].repeat(branches, 1), context, mask)[:, i]
        if branches == 2:
            c, un = logits.float().chunk(2)
            logits = un + guidance * (c - un)
        tok = draw(filter_logits(logits, temperature, top_k, top_p), u[:, i])
        if keep is not None:
            tok = torch.where(keep[:, i], known[:, i], tok)
        tokens[:, i] = tok
        if callback is not None:
            callback(i, None, None)
    return tokens
