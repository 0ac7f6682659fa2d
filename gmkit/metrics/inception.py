"""The FID network: InceptionV3 as ported from TensorFlow (pool3, 2048 features), in plain torch.

Only the published ``pt_inception-2015-12-05`` weights (the file pytorch-fid and torch-fidelity
download; sha256 below) turn a Frechet distance into *FID*. gmkit finds the file at a path given as
the ``extractor_weights`` setting, at ``GMKIT_INCEPTION_WEIGHTS``, or where those tools keep it
(``~/.cache/torch/hub/checkpoints``), and else downloads it there once (never with
``HF_HUB_OFFLINE=1``); reads it once with ``torch.load(weights_only=True)`` (no code runs); and keeps
a safetensors copy in gmkit's cache.

Preprocessing is torch-fidelity's, which reproduces the original TensorFlow FID: 8-bit RGB, resized
to 299x299 with TensorFlow 1's bilinear rule (no half-pixel offset), scaled by (x - 128) / 128.
The blocks differ from torchvision's InceptionV3 where the TF graph does: average pools ignore
padding, and the last block max-pools (Szegedy et al. 2016 architecture; pool3 as in Heusel et al. 2017).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GmkitError

PUBLISHED_NAME = "pt_inception-2015-12-05-6726825d.pth"
PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PUBLISHED_BYTES = 95_628_359
PUBLISHED_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PUBLISHED_NAME}"
# torch-fidelity keeps the same file under another name.
HUB_NAMES = (PUBLISHED_NAME, "weights-inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in the TF graph), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _chain(x, *convs):
    for c in convs:
        x = c(x)
    return x


def _avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF averages real pixels only


class BlockA(nn.Module):  # 35x35: 1x1, 5x5, double 3x3, pool
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), _chain(x, self.branch5x5_1, self.branch5x5_2),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          self.branch_pool(_avg3(x))], 1)


class BlockB(nn.Module):  # 35 -> 17: strided 3x3, strided double 3x3, max pool
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):  # 17x17: factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = Conv(cin, c7, 1), Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                          _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                                 self.branch7x7dbl_4, self.branch7x7dbl_5),
                          self.branch_pool(_avg3(x))], 1)


class BlockD(nn.Module):  # 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([_chain(x, self.branch3x3_1, self.branch3x3_2),
                          _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # 8x8: split 1x3 / 3x1 branches; the TF graph's last block max-pools
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), padding=(0, 1)), Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Stem, 11 Inception blocks, global average pool -> (N, 2048). Parameter names follow the published file."""

    feature_dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the classifier: in the file, unused for FID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, 299, 299) already scaled to [-1, 1)."""
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = _chain(F.max_pool2d(x, 3, stride=2), self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = _chain(F.max_pool2d(x, 3, stride=2), self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                   self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        return x.mean((2, 3))


def resize_tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1 ``resize_bilinear`` (align_corners=False, no half-pixel centres): output pixel i
    reads the input at i * in / out, interpolating between floor and floor + 1 (clamped to the edge)."""

    def axis(n_in: int):
        src = torch.arange(size, dtype=torch.float32) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = src.long()
        return lo, (lo + 1).clamp_max(n_in - 1), src - lo.float()

    (y0, y1, fy), (x0, x1, fx) = axis(x.shape[-2]), axis(x.shape[-1])
    top, bottom = x[..., y0, :], x[..., y1, :]
    rows = top + (bottom - top) * fy[:, None]
    left, right = rows[..., x0], rows[..., x1]
    return left + (right - left) * fx


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> the network's input: quantised to 8 bits as a saved PNG would be,
    grey repeated to RGB, resized to 299 the TF way, scaled by (x - 128) / 128."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (resize_tf1_bilinear(x, INPUT_SIZE) - 128) / 128


# -- the weights ------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    """Remembered per (path, size, modification time): the 95 MB file is hashed once."""
    from ..interop.pickles import _digest

    return _digest(Path(path))


def _cache_copy() -> Path:
    from ..data.core import cache_dir

    return cache_dir() / "metrics" / "inception-2015-12-05.safetensors"


def _hub_candidates() -> list[Path]:
    torch_home = Path(os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch")
    return [torch_home / "hub" / "checkpoints" / n for n in HUB_NAMES]


def missing_message(why: str = "HF_HUB_OFFLINE is set") -> str:
    return (f"inception: the FID weights ({PUBLISHED_NAME}, 95.6 MB) are not on this machine and cannot be "
            f"downloaded ({why}); fetch {PUBLISHED_URL} once and pass it with --extractor-weights PATH (or set "
            f"GMKIT_INCEPTION_WEIGHTS, or put it in ~/.cache/torch/hub/checkpoints/), or choose another --extractor")


def download(dest: Path) -> Path:
    """The published file, fetched once into ``dest`` (a temporary name renamed into place: an interrupted
    download leaves nothing that looks complete), only once its sha256 is the published one."""
    import hashlib
    import sys
    import urllib.request

    from ..interop.hub import hub_offline

    if hub_offline():
        raise GmkitError(missing_message())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        # a short timeout: an unreachable host is one line soon, not a long hang
        with urllib.request.urlopen(PUBLISHED_URL, timeout=20) as r, open(tmp, "wb") as f:
            # said once the host answers, so an unreachable one is the error line alone
            print(f"downloading the FID Inception weights once ({PUBLISHED_BYTES / 1e6:.1f} MB) to {dest}",
                  file=sys.stderr)
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
    except (OSError, ValueError) as e:  # URLError, timeouts and disk errors are all OSError
        tmp.unlink(missing_ok=True)
        raise GmkitError(missing_message(f"{type(e).__name__}: {getattr(e, 'reason', e)}")) from None
    if h.hexdigest() != PUBLISHED_SHA256:  # never leave a wrong file where the next run would find it
        tmp.unlink(missing_ok=True)
        raise GmkitError(missing_message(f"the download from {PUBLISHED_URL} does not have the published sha256"))
    os.replace(tmp, dest)
    return dest


def convert(path: Path) -> dict[str, torch.Tensor]:
    """The published .pth, checked (size, sha256) and read without unpickling code; saved to the cache."""
    from ..checkpoint import save_tensors, write_text

    path = Path(path)
    if not path.is_file():
        raise GmkitError(f"{path}: no such file (the inception weights: {PUBLISHED_NAME})")
    if path.stat().st_size != PUBLISHED_BYTES or sha256_file(path) != PUBLISHED_SHA256:
        raise GmkitError(f"{path}: not the published FID Inception weights ({PUBLISHED_NAME}, sha256 "
                         f"{PUBLISHED_SHA256[:16]}...); only that file gives FID")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise GmkitError(f"{path}: cannot read it as a tensor file ({type(e).__name__})") from None
    state = _check_state(state, path)
    out = _cache_copy()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(out, state, {"gmkit.kind": "inception-fid-weights", "gmkit.source": PUBLISHED_NAME,
                              "gmkit.source_sha256": PUBLISHED_SHA256})
    write_text(Path(str(out) + ".sha256"), sha256_file(out) + "\n")
    return state


def _check_state(state, path) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: no 24M random numbers drawn
        expected = {k: v.shape for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    if not isinstance(state, dict):
        raise GmkitError(f"{path}: expected a dict of tensors")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and (not torch.is_tensor(state[k]) or state[k].shape != expected[k]))
    if missing or wrong:
        raise GmkitError(f"{path}: not an FID InceptionV3 state dict ({len(missing)} tensors missing, "
                         f"{len(wrong)} of the wrong shape, e.g. {(missing + wrong)[0]})")
    return {k: state[k].float() for k in expected}


def locate_weights(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The published weights as tensors: an explicit path, the converted cache copy, the torch hub cache,
    or else a download into that cache."""
    from ..checkpoint import load_tensors

    path = path or os.environ.get("GMKIT_INCEPTION_WEIGHTS")
    if path:
        return convert(Path(path))
    cached = _cache_copy()
    stamp = Path(str(cached) + ".sha256")
    if cached.is_file() and stamp.is_file():
        if sha256_file(cached) == stamp.read_text().strip():
            tensors, meta = load_tensors(cached)
            if meta.get("gmkit.source_sha256") == PUBLISHED_SHA256:
                return _check_state(tensors, cached)
    for candidate in _hub_candidates():
        if candidate.is_file():
            return convert(candidate)
    return convert(download(_hub_candidates()[0]))


def load_inception(path: str | os.PathLike | None = None) -> FIDInception:
    state = locate_weights(path)
    with torch.device("meta"):
        net = FIDInception()
    # assign: the loaded tensors become the parameters; strict=False: the file has no num_batches_tracked
    net.load_state_dict(state, strict=False, assign=True)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked = torch.tensor(0)
    return net.eval().requires_grad_(False)
