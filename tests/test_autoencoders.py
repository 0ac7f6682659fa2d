"""VAE, VQ-VAE and AugVAE: the maths that must hold, and encode | quantize | decode as users chain it."""

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load, load_file, save_file

from conftest import run_cli
from gmkit.data import load_data
from gmkit.families.augvae import AugVAE, AugVAEConfig, augment
from gmkit.families.vae import VAE, VAEConfig
from gmkit.families.vqvae import VQVAE, VQVAEConfig
from gmkit.nn.likelihood import discretized_logistic_logp
from gmkit.nn.quantizer import VectorQuantizer

TINY_VAE = dict(image_size=8, channels=[8, 16], feature_channels=8, latent_dim=4, res_blocks=1)
TINY_VQ = dict(image_size=8, channels=[8, 16], num_codes=16, code_dim=4, prior_dim=16, prior_layers=1, prior_heads=2)
TINY_CLI_VAE = ["--set", "channels=[8,16]", "--set", "feature_channels=8", "--set", "latent_dim=4",
                "--set", "train.preview=4", "--set", "train.log_every=1"]
TINY_CLI_VQ = ["--set", "channels=[8,16]", "--set", "num_codes=16", "--set", "code_dim=4", "--set", "prior_dim=16",
               "--set", "prior_layers=1", "--set", "prior_heads=2", "--set", "train.preview=4"]


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "train"), load_data("digits", "test")


def _train(model, data, steps, lr=3e-3, batch=64, seed=0):
    torch.manual_seed(seed)
    model.train()
    opts = model.optimizers(lr, 0.0)
    g = torch.Generator().manual_seed(seed)
    images = data.images()
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        model.train_step(model, {"image": images[idx], "label": data.labels[idx]}, opts, step, 1.0)
    return model.eval()


# -- likelihood ---------------------------------------------------------------------------------

def test_discretized_logistic_is_a_probability_over_256_levels():
    levels = torch.arange(256).float() / 127.5 - 1
    for mean, log_scale in ((0.3, -2.0), (-0.99, -4.0), (1.0, 0.5), (0.0, -7.0)):
        logp = discretized_logistic_logp(levels, torch.full((256,), mean), torch.full((256,), log_scale))
        assert math.isclose(float(logp.exp().sum()), 1.0, abs_tol=2e-3)


def test_vae_elbo_decreases_and_iwae_is_tighter(digits):
    train, test = digits
    torch.manual_seed(0)
    vae = VAE(VAEConfig(**TINY_VAE)).eval()
    before = vae.bits_per_dim(test.images(64), samples=4)
    _train(vae, train, 60)
    after = vae.bits_per_dim(test.images(64), samples=16)
    assert after["elbo_bpd"] < before["elbo_bpd"] - 0.3
    assert after["iwae_bpd"] <= after["elbo_bpd"] + 1e-4  # the K-sample bound is at least as tight
    assert 0 < after["iwae_bpd"] < 8


def test_vae_encode_decode_shapes_and_reparameterization():
    vae = VAE(VAEConfig(**TINY_VAE)).eval()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    z = vae.encode(x)
    assert z["mean"].shape == (5, 4) and z["logvar"].shape == (5, 4)
    assert vae.decode(z["mean"]).shape == (5, 1, 8, 8)
    # gradients reach the encoder through the sampled z
    vae.train()
    vae({"image": x})["loss"].backward()
    assert vae.encoder.net[0].weight.grad.abs().sum() > 0


def test_sampling_is_per_seed():
    vae = VAE(VAEConfig(**TINY_VAE)).eval()
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    assert torch.allclose(vae.sample(gens([0, 1, 2]))[2], vae.sample(gens([2]))[0])
    vq = VQVAE(VQVAEConfig(**TINY_VQ)).eval()
    assert torch.allclose(vq.sample(gens([0, 5]))[1], vq.sample(gens([5]))[0])


# -- VQ-VAE ---------------------------------------------------------------------------------------

def test_straight_through_gradients_reach_the_encoder_and_not_the_codebook():
    vq = VQVAE(VQVAEConfig(**TINY_VQ)).train()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    out = vq({"image": x})
    out["mse"].backward(retain_graph=True)  # reconstruction alone: only straight-through can reach E
    assert vq.encoder.net[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in vq.prior.parameters())
    assert not vq.quantizer.embed.requires_grad
    # the prior's loss never reaches the autoencoder (it reads detached codes)
    vq.zero_grad()
    (out["loss"] - out["mse"] - vq.config.commitment * out["commit"]).backward()
    assert vq.encoder.net[0].weight.grad is None or vq.encoder.net[0].weight.grad.abs().sum() == 0
    assert vq.prior.head.weight.grad.abs().sum() > 0


def test_quantizer_kmeans_init_ema_update_and_dead_code_restart():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 2, decay=0.5, dead_threshold=0.5).train()
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    z = (centres.repeat(8, 1) + 0.01 * torch.randn(32, 2)).T.reshape(1, 2, 4, 8)
    q(z)
    assert int(q.initialized) == 1
    assert torch.cdist(centres, q.embed).min(1).values.max() < 0.1  # k-means found the four blobs
    # EMA: feed only points near (6, 6); the code for (5, 5) moves toward them
    code = int(torch.cdist(torch.tensor([[5.0, 5.0]]), q.embed).argmin())
    before = q.embed[code].clone()
    _, idx, _, stats = q(torch.full((1, 2, 2, 2), 6.0))
    assert (idx == code).all()
    assert (q.embed[code] - 6).abs().sum() < (before - 6).abs().sum()
    assert stats["usage"] == 0.25 and math.isclose(float(stats["perplexity"]), 1.0, rel_tol=1e-5)
    # the other codes go unused: their EMA usage decays below the threshold and they restart on data
    for _ in range(4):
        q(torch.full((1, 2, 2, 2), 6.0) + torch.randn(1, 2, 2, 2))
    assert torch.cdist(q.embed, torch.tensor([[6.0, 6.0]])).max() < 6


def test_vqvae_encode_decode_round_trip(digits):
    train, _ = digits
    vq = _train(VQVAE(VQVAEConfig(**TINY_VQ)), train, 20)
    codes = vq.encode(train.images(6))["codes"]
    assert codes.shape == (6, 2, 2) and codes.dtype == torch.long
    assert vq.decode(codes).shape == (6, 1, 8, 8)
    with pytest.raises(Exception, match="codes must lie"):
        vq.decode(torch.full((1, 2, 2), 99))


# -- AugVAE ---------------------------------------------------------------------------------------

def test_augment_changes_views_but_not_shape():
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    y = augment(x, AugVAEConfig(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().mean() > 0.01
    m = AugVAE(AugVAEConfig(**TINY_VAE)).eval()
    x8 = torch.rand(3, 1, 8, 8)
    inp, target = m.training_views({"image": x8, "label": torch.zeros(3, dtype=torch.long)})
    assert torch.equal(inp, x8) and torch.equal(target, x8)  # no augmentation outside training


def test_augvae_conditions_on_the_class():
    m = AugVAE(AugVAEConfig(**TINY_VAE)).eval()
    g = [torch.Generator().manual_seed(0)]
    a = m.sample(g, class_label=1)
    b = m.sample([torch.Generator().manual_seed(0)], class_label=2)
    assert not torch.allclose(a, b)  # same z, another label
    with pytest.raises(Exception, match="between 0 and 9"):
        m.sample(g, class_label=10)
    z = m.encode(torch.rand(2, 1, 8, 8), class_label=3)
    assert z["label"].tolist() == [3, 3]


# -- the command line ---------------------------------------------------------------------------

def _one_line_error(r):
    assert r.code != 0
    lines = [ln for ln in r.err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("gmkit: error:"), r.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    out = {}
    for name, fam, extra in (("vae", "vae", TINY_CLI_VAE + ["--seed", "0"]), ("vae2", "vae", TINY_CLI_VAE + ["--seed", "1"]),
                             ("vqvae", "vqvae", TINY_CLI_VQ), ("augvae", "augvae", TINY_CLI_VAE)):
        r = run_cli("train", fam, "--data", "digits", "--steps", "5", "--batch-size", "16", "--out", str(root / name),
                    "--quiet", *extra)
        assert r.code == 0, r.err
        out[name] = str(root / name)
    folder = root / "digits"
    folder.mkdir()
    for i, img in enumerate(load_data("digits", "test").images(5)):
        Image.fromarray(((img[0] + 1) * 127.5).round().byte().numpy(), "L").save(folder / f"{i}.png")
    out["images"] = str(folder)
    out["root"] = root
    return out


def test_cli_encode_decode_and_quantize_pipe(runs, tmp_path):
    r = run_cli("encode", runs["vae"], runs["images"], "--out", str(tmp_path / "z.safetensors"), "-q")
    assert r.code == 0, r.err
    z = load_file(str(tmp_path / "z.safetensors"))
    assert z["mean"].shape == (5, 4) and z["logvar"].shape == (5, 4)
    r = run_cli("decode", runs["vae"], str(tmp_path / "z.safetensors"), "--out", str(tmp_path / "recon") + "/")
    assert r.code == 0, r.err
    assert len(list((tmp_path / "recon").glob("*.png"))) == 5
    # encode | quantize | decode, through stdin and stdout
    enc = run_cli("encode", runs["vae"], runs["images"])
    q = run_cli("quantize", "-", "--codebook", "3", stdin=enc.raw)
    assert q.code == 0, q.err
    assert load(q.raw)["indices"].shape == (5, 1)
    d = run_cli("decode", runs["vae"], "-", "--out", str(tmp_path / "q.safetensors"), "--json", stdin=q.raw)
    assert d.code == 0, d.err
    assert json.loads(d.out)["quantized"] is True
    assert load_file(str(tmp_path / "q.safetensors"))["images"].shape == (5, 1, 8, 8)


def test_cli_vqvae_codes_round_trip_and_sampling(runs, tmp_path):
    codes = tmp_path / "codes.safetensors"
    r = run_cli("encode", runs["vqvae"], runs["images"], "--out", str(codes), "-q")
    assert r.code == 0, r.err
    t = load_file(str(codes))
    assert t["codes"].shape == (5, 2, 2) and not t["codes"].is_floating_point()
    r = run_cli("decode", runs["vqvae"], str(codes), "--out", str(tmp_path / "recon.png"))
    assert r.code == 0, r.err
    r = run_cli("sample", runs["vqvae"], "-n", "3", "--out", str(tmp_path / "s.safetensors"))
    assert r.code == 0, r.err
    assert load_file(str(tmp_path / "s.safetensors"))["images"].shape == (3, 1, 8, 8)
    # a file from another family
    r = run_cli("decode", runs["vae"], str(codes), "--out", str(tmp_path / "x.png"))
    _one_line_error(r)
    assert "vqvae latents" in r.err and not (tmp_path / "x.png").exists()


def test_cli_augvae_class_and_decode_uses_the_labels(runs, tmp_path):
    r = run_cli("sample", runs["augvae"], "--class", "7", "-n", "4", "--out", str(tmp_path / "s.png"))
    assert r.code == 0, r.err
    z = tmp_path / "z.safetensors"
    assert run_cli("encode", runs["augvae"], runs["images"], "--class", "3", "--out", str(z), "-q").code == 0
    assert load_file(str(z))["label"].tolist() == [3] * 5
    r = run_cli("decode", runs["augvae"], str(z), "--out", str(tmp_path / "d.png"))
    assert r.code == 0, r.err
    _one_line_error(run_cli("sample", runs["augvae"], "--class", "12", "--out", str(tmp_path / "t.png")))
    _one_line_error(run_cli("sample", runs["vae"], "--class", "1", "--out", str(tmp_path / "t.png")))


def test_cli_decode_refuses_bad_latents(runs, tmp_path):
    z = tmp_path / "z.safetensors"
    assert run_cli("encode", runs["vae"], runs["images"], "--out", str(z), "-q").code == 0
    out = tmp_path / "keep.png"
    out.write_bytes(b"keep")
    # another checkpoint of the same family
    r = run_cli("decode", runs["vae2"], str(z), "--out", str(out))
    _one_line_error(r)
    assert "another vae checkpoint" in r.err
    meta = {"gmkit.kind": "latents", "gmkit.family": "vae"}
    for tensor, words in ((torch.randn(3, 7), "needs (N, 4)"), (torch.zeros(0, 4), "empty"),
                          (torch.full((2, 4), float("nan")), "NaN")):
        save_file({"mean": tensor}, str(tmp_path / "bad.safetensors"), metadata=meta)
        r = run_cli("decode", runs["vae"], str(tmp_path / "bad.safetensors"), "--out", str(out))
        _one_line_error(r)
        assert words in r.err
    save_file({"mean": torch.randn(2, 4)}, str(tmp_path / "nometa.safetensors"))
    _one_line_error(run_cli("decode", runs["vae"], str(tmp_path / "nometa.safetensors"), "--out", str(out)))
    assert out.read_bytes() == b"keep"
