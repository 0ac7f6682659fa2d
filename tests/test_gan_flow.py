"""GAN and normalizing flow: exact flow algebra, the GAN's two-optimizer step, resume, options, CLI round trips."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

GAN_TINY = ["--set", "latent_dim=8", "--set", "g_channels=[16,8]", "--set", "d_channels=[8,16]",
            "--set", "diversity_every=2", "--set", "train.preview=4", "--set", "train.log_every=1"]
FLOW_TINY = ["--set", "steps_per_level=2", "--set", "hidden=8", "--set", "train.preview=4", "--set", "train.log_every=1"]


def _train(family, out, steps, *extra):
    tiny = GAN_TINY if family == "gan" else FLOW_TINY
    r = run_cli("train", family, "--data", "digits", "--steps", str(steps), "--batch-size", "16", "--out", str(out),
                "--quiet", "--checkpoint-every", "100", *tiny, *extra)
    assert r.code == 0, r.err
    return r


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "run"
    _train("gan", out, 4)
    return out


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "run"
    _train("flow", out, 3)
    return out


def _tiny_flow(**kw):
    from gmkit.families.flow import Flow, FlowConfig

    torch.manual_seed(0)
    m = Flow(FlowConfig(image_size=4, levels=2, steps_per_level=2, hidden=8, **kw))
    m.train()
    m({"image": torch.rand(8, 1, 4, 4) * 2 - 1})  # data-dependent actnorm init
    with torch.no_grad():  # move every zero-initialised layer off the identity, so the test has teeth
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval().double()


# -- flow: exact algebra ------------------------------------------------------------------------

@pytest.mark.parametrize("preprocess", ["logit", "affine"])
def test_flow_log_determinant_matches_brute_force_jacobian(preprocess):
    m = _tiny_flow(preprocess=preprocess)
    y = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    with torch.no_grad():
        _, logdet = m.latent(y)
    jac = torch.autograd.functional.jacobian(lambda t: m.latent(t.view(1, 1, 4, 4))[0].view(-1), y.view(-1))
    assert jac.shape == (16, 16)
    sign, brute = torch.linalg.slogdet(jac)
    assert sign != 0 and abs(float(logdet) - float(brute)) < 1e-8 * max(1.0, abs(float(brute)))
    # and the density integrates the way change of variables says: log p(y) = log N(eps) + logdet
    eps, _ = m.latent(y)
    assert torch.allclose(m.log_prob_unit(y), -0.5 * (math.log(2 * math.pi) + eps.pow(2)).sum(1) + logdet)


def test_flow_is_exactly_invertible():
    m = _tiny_flow()
    s = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    eps, _ = m.flow_forward(s)
    assert eps.shape == (3, 16)
    assert (m.flow_inverse(eps) - s).abs().max() < 1e-12
    m = m.float()
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 127.5 - 1  # 8-bit images
    assert (m.decode(m.encode(x)["z"]) - x).abs().max() < 1e-5


def test_flow_decode_stays_finite_far_from_the_data():
    m = _tiny_flow().float()
    with torch.no_grad():  # an ill-conditioned coupling: its scale underflows to 0 for some inputs
        m.levels[0][0].coupling.net[-1].bias.fill_(-200.0)
    x = m.decode(torch.randn(16, 16) * 30)
    assert torch.isfinite(x).all() and x.abs().max() <= 1


def test_flow_bits_per_dim_is_finite_and_counts_dequantization():
    from gmkit.families.flow import Flow, FlowConfig

    torch.manual_seed(0)
    m = Flow(FlowConfig(image_size=8, steps_per_level=1, hidden=8))
    x = torch.randint(0, 256, (6, 1, 8, 8)).float() / 127.5 - 1
    bpd = m.bits_per_dim(x)
    # An untrained flow (identity after logit) on uniform pixels: a few bits/dim, never below 0.
    assert bpd["images"] == 6 and 0 < bpd["bpd"] < 20
    out = m({"image": x})
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])


# -- GAN: the training step ---------------------------------------------------------------------

def test_gan_train_step_updates_both_networks_and_the_ema():
    from gmkit.families.gan import GAN, GANConfig
    from gmkit.loop import EMA

    torch.manual_seed(0)
    m = GAN(GANConfig(image_size=8, latent_dim=8, g_channels=[16, 8], d_channels=[8, 16], diversity_every=1)).train()
    opts = m.optimizers(1e-3, 0.0)
    assert set(opts) == {"generator", "discriminator"}
    ema = EMA(m, 0.9)
    g0 = {k: v.clone() for k, v in m.generator.state_dict().items()}
    d0 = {k: v.clone() for k, v in m.discriminator.state_dict().items()}
    e0 = {k: v.clone() for k, v in ema.shadow.items()}
    batch = {"image": torch.rand(8, 1, 8, 8) * 2 - 1}
    stats = m.train_step(m, batch, opts, 0, 1.0)
    ema.update(m, 0)
    for key in ("loss", "d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "diversity"):
        assert key in stats and math.isfinite(stats[key]), key
    assert any(not torch.equal(v, m.generator.state_dict()[k]) for k, v in g0.items() if v.is_floating_point())
    assert any(not torch.equal(v, m.discriminator.state_dict()[k]) for k, v in d0.items() if v.is_floating_point())
    assert any(not torch.equal(v, ema.shadow[k]) for k, v in e0.items() if k.startswith("generator."))


def test_conditional_gan_diversity_sees_collapse_within_classes():
    """A conditional generator that ignores z draws one image per class: diverse across classes,
    collapsed within each. The check compares within classes, so it reads near 0."""
    from gmkit.families.gan import GAN, GANConfig

    torch.manual_seed(0)
    m = GAN(GANConfig(image_size=8, latent_dim=8, g_channels=[16, 8], d_channels=[8, 16], num_classes=3,
                      diversity_batch=12, g_norm="none")).train()
    real, labels = torch.rand(12, 1, 8, 8) * 2 - 1, torch.arange(12) % 3
    healthy = m.diversity(real, labels)
    with torch.no_grad():
        m.generator.fc.weight[:, :8] = 0  # the fc reads [z, embed(y)]: z no longer reaches the image
    assert m.diversity(real, labels) < 1e-6 < healthy
    assert m.diversity(real) > 1e-3  # over mixed classes the collapse stays hidden


def test_gan_nonsaturating_loss_and_r1_penalty_run():
    from gmkit.families.gan import GAN, GANConfig

    torch.manual_seed(0)
    m = GAN(GANConfig(image_size=8, latent_dim=8, g_channels=[16, 8], d_channels=[8, 16], loss="nonsaturating",
                      r1_gamma=10.0, r1_every=1, num_classes=3)).train()
    stats = m.train_step(m, {"image": torch.rand(8, 1, 8, 8) * 2 - 1, "label": torch.arange(8) % 3},
                         m.optimizers(1e-3, 0.0), 0, 0.0)
    assert stats["r1"] > 0 and math.isfinite(stats["loss"])
    x = m.eval().sample([torch.Generator().manual_seed(i) for i in range(4)], class_label=2)
    assert x.shape == (4, 1, 8, 8) and x.abs().max() <= 1


def test_diffaugment_policies_move_pixels_differentiably_and_per_image():
    from gmkit.nn.diffaugment import diff_augment, parse_policy

    assert parse_policy(" translation, cutout ") == ("translation", "cutout") and parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown policy 'blur'"):
        parse_policy("translation,blur")
    torch.manual_seed(0)
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    shifted = diff_augment(x, ("translation",))
    assert shifted.shape == x.shape
    # a shift by (dy, dx) within +-1 px (1/8 of 8): every image equals the original shifted, edges replicated
    for img in shifted[:, 0]:
        assert any(torch.equal(img, x[0, 0][(torch.arange(8) + dy).clamp(0, 7)][:, (torch.arange(8) + dx).clamp(0, 7)])
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert len({tuple(img.flatten().tolist()) for img in shifted[:, 0]}) > 1  # drawn per image
    cut = diff_augment(torch.ones(32, 1, 8, 8), ("cutout",))
    zeros = (cut == 0).flatten(1).sum(1)
    assert zeros.max() <= 16 and zeros.float().mean() > 4  # a 4x4 square, sometimes partly outside the frame
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    diff_augment(x, parse_policy("color,translation,cutout")).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator learns through the augmentation


def test_gan_with_diffaugment_and_ttur_trains_resumes_exactly_and_refuses_bad_settings(tmp_path):
    extra = ("--set", "augment=translation,cutout", "--set", "d_lr_scale=2")
    _train("gan", tmp_path / "straight", 4, *extra)
    _train("gan", tmp_path / "split", 2, *extra)
    _train("gan", tmp_path / "split", 4, "--resume", str(tmp_path / "split"))
    a = load_file(tmp_path / "straight" / "train_state.safetensors")
    b = load_file(tmp_path / "split" / "train_state.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "ema.", "optim.")))
    from gmkit.checkpoint import read_metadata

    meta = read_metadata(tmp_path / "split" / "train_state.safetensors")
    d_lr = json.loads(meta["gmkit.optim.discriminator"])[0]["lr"]
    g_lr = json.loads(meta["gmkit.optim.generator"])[0]["lr"]
    assert d_lr == pytest.approx(2 * g_lr) and g_lr > 0  # the loop's schedule keeps the ratio
    for setting, message in (("augment=blur", "unknown policy 'blur'"), ("d_lr_scale=0", "d_lr_scale must be")):
        r = run_cli("train", "gan", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "bad"), "--quiet",
                    *GAN_TINY, "--set", setting)
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_gan_training_logs_what_exposes_instability(gan_run):
    log = [json.loads(line) for line in (gan_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"):
        assert all(key in r for r in log), key
    assert "diversity" in log[1] and log[1]["diversity"] > 0  # diversity_every=2


def test_gan_resume_restores_both_optimizers_bit_for_bit(tmp_path):
    _train("gan", tmp_path / "straight", 6)
    _train("gan", tmp_path / "split", 3)
    _train("gan", tmp_path / "split", 6, "--resume", str(tmp_path / "split"))
    a = load_file(tmp_path / "straight" / "train_state.safetensors")
    b = load_file(tmp_path / "split" / "train_state.safetensors")
    assert any(k.startswith("optim.generator.") for k in a) and any(k.startswith("optim.discriminator.") for k in a)
    keys = [k for k in a if k.startswith(("model.", "ema.", "optim."))]
    assert set(keys) == {k for k in b if k.startswith(("model.", "ema.", "optim."))}
    assert all(torch.equal(a[k], b[k]) for k in keys), [k for k in keys if not torch.equal(a[k], b[k])][:3]


def test_gan_nan_stops_before_stepping_and_keeps_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _train("gan", out, 2)
    before = (out / "model.safetensors").read_bytes()
    from gmkit.families.gan import GAN

    monkeypatch.setattr(GAN, "d_loss", lambda self, r, f: (r.mean() + f.mean()) * float("nan"))
    r = run_cli("train", "gan", "--steps", "4", "--resume", str(out), "--quiet")
    assert r.code != 0 and "loss became nan" in r.err and "Traceback" not in r.err
    assert (out / "model.safetensors").read_bytes() == before


def test_gan_mode_collapse_stops_with_a_clear_message(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "gan", "--data", "digits", "--steps", "6", "--batch-size", "16", "--out", str(out), "--quiet",
                *GAN_TINY, "--set", "collapse_threshold=100", "--set", "collapse_after=0",
                "--set", "collapse_patience=2", "--set", "diversity_every=1")
    assert r.code == 2 and "mode collapse at step 2" in r.err and "collapse_threshold" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


# -- sampling options ---------------------------------------------------------------------------

def test_truncation_bounds_the_latent_and_keeps_per_seed_images():
    from gmkit.families.gan import truncated_normal

    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    z = truncated_normal((6, 32), gens(range(6)), 0.5, "cpu")
    assert z.abs().max() <= 0.5 and z.std() > 0.1
    assert torch.equal(truncated_normal((1, 32), gens([3]), 0.5, "cpu")[0], z[3])


def test_gan_samples_with_truncation_and_json_report(gan_run, tmp_path):
    r = run_cli("sample", str(gan_run), "-n", "4", "--seed", "0", "--truncation", "0.7", "--out",
                str(tmp_path / "t.safetensors"), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["family"] == "gan" and report["truncation"] == 0.7 and report["n"] == 4
    t = load_file(tmp_path / "t.safetensors")["images"]
    r = run_cli("sample", str(gan_run), "-n", "4", "--seed", "0", "--out", str(tmp_path / "p.safetensors"), "--quiet")
    assert r.code == 0, r.err
    assert t.shape == (4, 1, 8, 8) and not torch.equal(t, load_file(tmp_path / "p.safetensors")["images"])


def test_flow_temperature_zero_gives_the_mode_for_every_seed(flow_run, tmp_path):
    r = run_cli("sample", str(flow_run), "-n", "3", "--temperature", "0", "--out", str(tmp_path / "m.safetensors"), "--quiet")
    assert r.code == 0, r.err
    x = load_file(tmp_path / "m.safetensors")["images"]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    r = run_cli("sample", str(flow_run), "-n", "3", "--temperature", "0.7", "--out", str(tmp_path / "s.safetensors"),
                "--json")
    assert r.code == 0 and json.loads(r.out)["temperature"] == 0.7
    x = load_file(tmp_path / "s.safetensors")["images"]
    assert not torch.equal(x[0], x[1])


@pytest.mark.parametrize("which,flag", [("gan", "--temperature"), ("flow", "--truncation"), ("ddpm", "--temperature"),
                                        ("ddpm", "--truncation")])
def test_other_families_refuse_the_option_in_one_line(which, flag, gan_run, flow_run, tiny_run, tmp_path):
    src = {"gan": gan_run, "flow": flow_run, "ddpm": tiny_run}[which]
    r = run_cli("sample", str(src), "-n", "2", flag, "0.7", "--out", str(tmp_path / "x.png"))
    assert r.code == 2 and "Traceback" not in r.err
    assert r.err.strip() == f"gmkit: error: {which} models do not take {flag}"


def test_gan_refuses_class_when_unconditional(gan_run, tmp_path):
    r = run_cli("sample", str(gan_run), "-n", "2", "--class", "3", "--out", str(tmp_path / "x.png"))
    assert r.code == 2 and "unconditional" in r.err


# -- flow through the CLI: encode / decode ------------------------------------------------------

def test_flow_encode_decode_round_trip_via_cli(flow_run, tmp_path):
    from gmkit.data import load_data
    from gmkit.imageio import save_images

    x = load_data("digits", "test").images(5)
    save_images(x, str(tmp_path / "digits") + "/")
    z_file = tmp_path / "z.safetensors"
    r = run_cli("encode", str(flow_run), str(tmp_path / "digits"), "--out", str(z_file), "--quiet")
    assert r.code == 0, r.err
    z = load_file(z_file)["z"]
    assert z.shape == (5, 64)
    r = run_cli("decode", str(flow_run), str(z_file), "--out", str(tmp_path / "back.safetensors"), "--quiet")
    assert r.code == 0, r.err
    back = load_file(tmp_path / "back.safetensors")["images"]
    from gmkit.imageio import load_image_file

    files = sorted((tmp_path / "digits").glob("*.png"))
    original = torch.cat([load_image_file(str(p), 1, 8) for p in files])
    assert (back - original).abs().max() < 1e-4
    r = run_cli("decode", str(flow_run), str(z_file), "--out", str(tmp_path / "recon") + "/", "--quiet")
    assert r.code == 0 and len(list((tmp_path / "recon").glob("*.png"))) == 5
    r = run_cli("encode", str(flow_run), str(tmp_path / "digits"), "--class", "3", "--out", str(tmp_path / "c.safetensors"))
    assert r.code == 2 and "--class" in r.err and "Traceback" not in r.err


def test_bench_handles_families_without_steps(gan_run, flow_run):
    r = run_cli("bench", "--models", f"{gan_run},{flow_run}", "--batch-size", "4", "--runs", "1", "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)["results"]
    assert [row["family"] for row in rows] == ["gan", "flow"] and all(row["steps"] == 1 for row in rows)
