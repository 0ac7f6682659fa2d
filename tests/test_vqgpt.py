"""Text-to-image over VQ codes (vqgpt): the cached transformer, guidance, masked completion, resume, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from conftest import run_cli

TINY_VQ = ["--set", "vq.channels=[8,16]", "--set", "vq.res_blocks=1", "--set", "vq.num_codes=16", "--set", "vq.code_dim=4"]
TINY_GPT = ["--set", "dim=16", "--set", "layers=1", "--set", "heads=2", "--set", "train.preview=2",
            "--set", "train.log_every=1", "--set", "train.warmup=2"]


@pytest.fixture(scope="module")
def tiny_vqgpt(tmp_path_factory) -> Path:
    """A tiny vqgpt (and the first-stage VQ-VAE it trains itself) after a few steps on captioned MNIST."""
    out = tmp_path_factory.mktemp("runs") / "vqgpt"
    r = run_cli("train", "vqgpt", "--data", "mnist-captions", "--ae-steps", "3", "--steps", "4", "--batch-size", "8",
                "--out", str(out), "--quiet", *TINY_VQ, *TINY_GPT)
    assert r.code == 0, r.err
    return out


def _model(run: Path):
    from gmkit.registry import load

    return load(str(run))[0]


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- the transformer and its cache ----------------------------------------------------------------

def _random_gpt(context_dim=12):
    from gmkit.nn.gpt import GPT

    torch.manual_seed(0)
    return GPT(vocab=11, length=9, dim=16, layers=2, heads=2, context_dim=context_dim).eval()


def test_cached_logits_equal_the_full_forward():
    m = _random_gpt()
    tokens = torch.randint(0, 11, (3, 9))
    ctx, mask = torch.randn(3, 5, 12), torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    full = m(tokens, ctx, mask)
    cache = m.new_cache()
    inp = torch.cat([torch.full((3, 1), 11), tokens[:, :-1]], 1)
    # One position at a time, then a chunk of three: both must match the uncached forward.
    steps = [m(inp[:, i:i + 1], ctx, mask, cache) for i in range(6)] + [m(inp[:, 6:9], ctx, mask, cache)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"guidance": 2.5, "top_k": 4}, {"temperature": 0.7, "top_p": 0.8}])
def test_kv_cache_samples_the_same_tokens(options):
    from gmkit.nn.gpt import sample_tokens

    m = _random_gpt()
    u = torch.rand(4, 9, generator=torch.Generator().manual_seed(1))
    cond = (torch.randn(4, 5, 12), torch.ones(4, 5, dtype=torch.bool))
    uncond = (torch.randn(4, 5, 12), torch.ones(4, 5, dtype=torch.bool))
    a = sample_tokens(m, u, [cond, uncond], use_cache=True, **options)
    b = sample_tokens(m, u, [cond, uncond], use_cache=False, **options)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 11


def test_top_k_and_top_p_keep_only_likely_tokens():
    from gmkit.nn.gpt import filter_logits

    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert (filter_logits(logits, top_k=2) > 0).tolist() == [[True, True, False, False, False]]
    p = filter_logits(logits)
    assert (filter_logits(logits, top_p=float(p[0, 0]) + 1e-3) > 0).sum() == 2  # the first alone is not enough
    assert filter_logits(logits, temperature=0).tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    assert torch.allclose(filter_logits(logits, top_k=2).sum(), torch.tensor(1.0))


def test_bundled_vqvae_prior_samples_the_same_tokens_through_the_cache():
    """The VQ-VAE prior moved onto the cached transformer: the bundled checkpoint loads and draws the
    tokens it drew before (digest taken with the earlier nn.TransformerEncoder prior, seeds 0-7)."""
    from gmkit.registry import load

    net = load("vqvae")[0]
    codes = net.sample_codes(_gens(range(8)))
    digest = hashlib.sha256(codes.numpy().astype("int64").tobytes()).hexdigest()
    assert digest == "4170083f4b6a65377ab38c5c5bc668f510451f2e3e4faa3f4929fb9b5813fd03"
    assert torch.equal(codes, net.sample_codes(_gens(range(8)), use_cache=False))


# -- the family -------------------------------------------------------------------------------------

def test_guidance_zero_is_the_unconditional_model(tiny_vqgpt):
    m = _model(tiny_vqgpt)
    a = m.sample_codes(_gens(range(3)), prompt="a handwritten digit seven", guidance=0.0)
    b = m.sample_codes(_gens(range(3)), prompt="", guidance=1.0)
    assert torch.equal(a, b)
    c = m.sample_codes(_gens(range(3)), prompt="a handwritten digit seven", guidance=0.0, negative_prompt="digit two")
    d = m.sample_codes(_gens(range(3)), prompt="digit two", guidance=1.0)
    assert torch.equal(c, d)


def test_guided_sampling_uses_both_branches(tiny_vqgpt):
    m = _model(tiny_vqgpt)
    gens = range(6)
    plain = m.sample_codes(_gens(gens), prompt="a handwritten digit seven", guidance=1.0)
    guided = m.sample_codes(_gens(gens), prompt="a handwritten digit seven", guidance=8.0)
    assert not torch.equal(plain, guided)
    assert torch.equal(guided, m.sample_codes(_gens(gens), prompt="a handwritten digit seven", guidance=8.0,
                                              use_cache=False))


def test_masked_completion_keeps_the_given_tokens(tiny_vqgpt):
    from gmkit.data import load_data

    m = _model(tiny_vqgpt)
    x = load_data("mnist-captions", "test").images(1)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:, :] = 1  # regenerate the bottom half
    given = m.encode(x)["codes"]
    codes = m.sample_codes(_gens(range(4)), prompt="digit three", image=x, mask=mask)
    h = codes.shape[1]
    keep = torch.nn.functional.adaptive_max_pool2d(mask, (h, h))[0, 0] == 0
    assert keep.any() and (~keep).any()
    assert torch.equal(codes[:, keep], given.expand(4, -1, -1)[:, keep])
    assert not all(torch.equal(codes[i], given[0]) for i in range(4))  # the masked tokens were redrawn
    images = m.sample(_gens(range(2)), prompt="digit three", image=x, mask=mask)
    assert torch.equal(images[:, :, :14], x.expand(2, -1, -1, -1)[:, :, :14])  # kept pixels are the input's


def test_seed_s_plus_i_and_prompts_from_stdin(tiny_vqgpt, tmp_path):
    r = run_cli("sample", str(tiny_vqgpt), "--prompt", "digit five", "-n", "3", "--seed", "5", "--out", str(tmp_path / "a.safetensors"))
    assert r.code == 0, r.err
    r = run_cli("sample", str(tiny_vqgpt), "--prompt", "digit five", "-n", "1", "--seed", "6", "--out", str(tmp_path / "b.safetensors"))
    assert r.code == 0, r.err
    from safetensors.torch import load_file

    a, b = (next(iter(load_file(tmp_path / f).values())) for f in ("a.safetensors", "b.safetensors"))
    assert torch.allclose(a[1], b[0], atol=1e-5)  # the same tokens; the decoder's batch size moves the last bits
    r = run_cli("sample", str(tiny_vqgpt), "--prompt", "-", "--top-k", "5", "--top-p", "0.9", "--temperature", "0.8",
                "--guidance", "2", "--out", str(tmp_path / "p") + "/", stdin=b"digit one\n\ndigit two\n")
    assert r.code == 0, r.err
    assert len(list((tmp_path / "p").glob("*.png"))) == 2


def test_resume_is_exact(tmp_path):
    # The cosine decay is pinned to 4 steps, so stopping at 2 changes nothing but the stop.
    common = ["--data", "mnist-captions", "--ae-steps", "2", "--batch-size", "8", "--quiet", "--set", "train.lr_decay_steps=4",
              *TINY_VQ, *TINY_GPT]
    r = run_cli("train", "vqgpt", "--steps", "4", "--out", str(tmp_path / "a"), "--json", *common)
    assert r.code == 0, r.err
    first = r.out
    r = run_cli("train", "vqgpt", "--steps", "2", "--out", str(tmp_path / "b"), *common)
    assert r.code == 0, r.err
    r = run_cli("train", "vqgpt", "--resume", str(tmp_path / "b"), "--steps", "4", "--json", "--quiet")
    assert r.code == 0, r.err
    import json

    assert json.loads(r.out)["weights_sha256"] == json.loads(first)["weights_sha256"]


def test_reuses_a_given_first_stage(tiny_vqgpt, tmp_path):
    r = run_cli("train", "vqgpt", "--data", "mnist-captions", "--autoencoder", str(tiny_vqgpt / "autoencoder"),
                "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "r"), "--quiet", *TINY_GPT)
    assert r.code == 0, r.err
    assert not (tmp_path / "r" / "autoencoder").exists()
    assert torch.equal(_model(tmp_path / "r").vq.quantizer.embed, _model(tiny_vqgpt).vq.quantizer.embed)
    r = run_cli("train", "vqgpt", "--data", "mnist-captions", "--autoencoder", "ddpm", "--steps", "1",
                "--out", str(tmp_path / "x"))
    assert r.code == 2 and "not a vqvae" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("args, stdin, message", [
    (["--prompt", "-"], b"\n  \n", "stdin held no prompts"),
    (["--prompt", "a", "--top-p", "0"], None, "--top-p must be in (0, 1]"),
    (["--prompt", "a", "--top-k", "-1"], None, "--top-k must be >= 0"),
    (["--prompt", "a", "--guidance", "-1"], None, "--guidance must be >= 0"),
    (["--prompt", "a", "--mask", "m.png"], None, "--mask edits an image: add --image"),
    (["--prompt", "a", "--image", "IMG"], None, "--mask is needed with --image"),
    (["--prompt", "a", "--image", "IMG", "--mask", "IMG", "--strength", "0.5"], None, "do not take --strength"),
])
def test_bad_prompts_and_masks_give_one_clear_line(tiny_vqgpt, tmp_path, args, stdin, message):
    from PIL import Image

    Image.new("L", (28, 28), 0).save(tmp_path / "img.png")
    args = [str(tmp_path / "img.png") if a == "IMG" else a for a in args]
    r = run_cli("sample", str(tiny_vqgpt), *args, "--out", str(tmp_path / "o.png"), stdin=stdin)
    assert r.code == 2, r.err
    lines = [line for line in r.err.splitlines() if line.startswith("gmkit: error")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.err


def test_masks_of_the_wrong_shape_are_refused(tiny_vqgpt):
    from gmkit.errors import OptionError

    m = _model(tiny_vqgpt)
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(OptionError, match="mask needs shape"):
        m.sample_codes(_gens([0]), image=x, mask=torch.zeros(1, 1, 14, 14))
    with pytest.raises(OptionError, match="image needs one image"):
        m.sample_codes(_gens([0]), image=torch.zeros(1, 3, 28, 28), mask=torch.zeros(1, 1, 28, 28))


def test_a_first_stage_without_prior_cannot_sample_but_encodes(tiny_vqgpt):
    from gmkit.errors import GmkitError

    vq = _model(tiny_vqgpt / "autoencoder")
    assert vq.prior is None
    with pytest.raises(GmkitError, match="no prior"):
        vq.sample(_gens([0]))
    assert vq.encode(torch.zeros(2, 1, 28, 28))["codes"].shape == (2, 7, 7)
