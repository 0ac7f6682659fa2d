"""Score-based samplers and the ODE likelihood against a Gaussian mixture whose score is known.

For data from sum_k w_k N(m_k, s_k^2 I), the data blurred by N(0, sigma^2 I) is the mixture with
variances s_k^2 + sigma^2, so the exact denoiser is D(x, sigma) = x + sigma^2 grad log p_sigma(x).
Correct samplers driven by it must return the mixture; the ODE likelihood must return its density.
"""

from __future__ import annotations

import math

import pytest
import torch

from gmkit.diffusion import samplers
from gmkit.diffusion.ode_likelihood import ode_log_likelihood
from gmkit.diffusion.process import VESDE, VPSDE, DiscreteLevels
from gmkit.diffusion.samplers import SAMPLERS
from gmkit.diffusion.schedules import SIGMA_SCHEDULES, alphas_cumprod, karras_sigmas, linear_betas

from conftest import run_cli

WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64)  # (K, 2); 1-D tests use column 0
STD = 0.2


class Mixture:
    """The exact denoiser of an isotropic Gaussian mixture in ``dim`` dimensions (x of shape (N, dim))."""

    sigma_min, sigma_max = 0.01, 40.0

    def __init__(self, dim: int, std: float = STD):
        self.std = std
        self.means = torch.zeros(len(MEANS), dim, dtype=torch.float64)
        self.means[:, :min(dim, 2)] = MEANS[:, :dim]
        self.dim = dim

    def log_prob(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        var = self.std ** 2 + sigma ** 2
        d2 = (x.double()[:, None, :] - self.means[None]).pow(2).sum(-1)  # (N, K)
        comp = -0.5 * d2 / var - 0.5 * self.dim * math.log(2 * math.pi * var)
        return torch.logsumexp(comp + WEIGHTS.log()[None], dim=1)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        var = self.std ** 2 + float(sigma) ** 2
        d2 = (x.double()[:, None, :] - self.means[None]).pow(2).sum(-1)
        r = torch.softmax(-0.5 * d2 / var + WEIGHTS.log()[None], dim=1)  # responsibilities (N, K)
        score = (r[:, :, None] * (self.means[None] - x.double()[:, None, :])).sum(1) / var
        return (x.double() + float(sigma) ** 2 * score).to(x.dtype)


def check_mixture(x: torch.Tensor, tol: float = 0.04) -> None:
    """Coordinate 0 holds the two modes (weights 0.3 / 0.7 at -1 / +1, std 0.2); the others N(0, 0.2^2)."""
    if x.shape[1] > 2:
        rest = x[:, 2:]
        assert abs(float(rest.std()) - STD) < tol and abs(float(rest.mean())) < tol, f"other coordinates std {float(rest.std()):.3f}"
    x = x[:, 0]
    right = x > 0
    frac = float(right.float().mean())
    assert abs(frac - 0.7) < tol, f"mode weight {frac:.3f}, want 0.70"
    for mask, m in ((right, 1.0), (~right, -1.0)):
        mean, std = float(x[mask].mean()), float(x[mask].std())
        assert abs(mean - m) < tol and abs(std - STD) < tol, f"mode at {m}: mean {mean:.3f}, std {std:.3f}"


def generate(den, sampler: str, x: torch.Tensor, noise, steps: int) -> torch.Tensor:
    """A sampler from the registry on its default sigma schedule between the denoiser's levels."""
    info = SAMPLERS[sampler]
    return info.fn(den, x, SIGMA_SCHEDULES[info.default_schedule](steps, den.sigma_min, den.sigma_max), noise=noise)


N, DIM = 2000, 16  # 16 dimensions: the pc corrector's step size uses norms, meaningful only beyond 1-D


@pytest.mark.parametrize("sampler,steps", [("euler", 60), ("heun", 18), ("euler-ancestral", 80), ("euler-maruyama", 400),
                                           ("pc", 200), ("langevin", 100)])
def test_sampler_recovers_mixture(sampler, steps):
    den = Mixture(DIM)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, DIM, generator=g)
    out = generate(den, sampler, x, g, steps=steps)
    check_mixture(out)


def test_a_wrong_score_fails_the_check():
    """The check can fail: a denoiser with the modes' weights swapped gives the wrong mixture."""
    den = Mixture(1)
    den.means = -den.means
    g = torch.Generator().manual_seed(1)
    out = generate(den, "heun", torch.randn(N, 1, generator=g), g, steps=18)
    with pytest.raises(AssertionError):
        check_mixture(out)


def test_ode_likelihood_matches_true_density_exact_trace():
    den = Mixture(2)
    g = torch.Generator().manual_seed(0)
    comp = (torch.rand(64, generator=g) < 0.7).long()
    x = (MEANS[comp] + STD * torch.randn(64, 2, generator=g, dtype=torch.float64)).float()
    want = den.log_prob(x, den.sigma_min)
    errors = [(ode_log_likelihood(den, x, steps=k, exact=True)["log_px"].double() - want).abs() for k in (10, 80)]
    assert errors[1].max() < 0.05 and errors[1].mean() < 0.01, errors[1].max()
    assert errors[1].mean() < errors[0].mean() / 4  # second order: 8x the steps, far less error


def test_ode_likelihood_of_nearly_discrete_data():
    """Modes narrower than sigma_min (like 8-bit pixels): the clean part of the divergence is ~1/sigma,
    which a trapezoid in sigma would overestimate by ~0.5 nats per dimension at 16 steps."""
    den = Mixture(2, std=0.002)
    g = torch.Generator().manual_seed(0)
    x = (MEANS[(torch.rand(64, generator=g) < 0.7).long()] + 0.002 * torch.randn(64, 2, generator=g, dtype=torch.float64)).float()
    err = ode_log_likelihood(den, x, steps=16, exact=True)["log_px"].double() - den.log_prob(x, den.sigma_min)
    assert err.abs().mean() < 0.05, err.abs().mean()


def test_ode_likelihood_hutchinson_is_unbiased():
    den = Mixture(2)
    x = MEANS[[0, 1]].float().repeat(256, 1) + 0.1
    g = torch.Generator().manual_seed(0)
    got = ode_log_likelihood(den, x, steps=40, generator=g)["log_px"].double().view(256, 2).mean(0)
    want = den.log_prob(x[:2], den.sigma_min)
    assert (got - want).abs().max() < 0.1, (got, want)


def test_sigma_views_are_inverse():
    for sde in (VESDE(0.01, 35.0), VPSDE()):
        t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
        torch.testing.assert_close(sde.t(sde.sigma(t)), t)
    disc = DiscreteLevels(alphas_cumprod(linear_betas(1000)))
    t = torch.tensor([0.0, 3.25, 500.5, 998.9], dtype=torch.float64)
    torch.testing.assert_close(disc.t(disc.sigma(t)), t)
    s = karras_sigmas(18, 0.002, 80.0)
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002) and float(s[-1]) == 0


def _tiny_ddpm():
    from gmkit.families.ddpm import DDPM, DDPMConfig
    from gmkit.nn.unet import UNetConfig

    torch.manual_seed(0)
    cfg = DDPMConfig(unet=UNetConfig(sample_size=8, block_out_channels=[8, 16], attention_blocks=[1], norm_groups=4),
                     clip_sample=False)
    return DDPM(cfg).eval()


def test_eps_to_score_adapter_euler_is_ddim():
    """Euler on the probability-flow ODE at DDPM's own discrete sigmas is DDIM with eta = 0
    (Song et al. 2021a, sec. 4.3): the adapter must reproduce the DDIM sampler step for step."""
    model = _tiny_ddpm()
    sigmas = model.process.sigmas("discrete", 10)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, 1, 8, 8, generator=g)
    with torch.no_grad():
        den = model.denoiser(3)
        want = samplers.ddim(den, x_t, sigmas)
        got = samplers.euler(den, x_t, sigmas)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_ddpm_network_samples_with_every_sampler():
    model = _tiny_ddpm()
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for name in SAMPLERS:
        x = model.sample(gens, sampler=name, steps=4)
        assert x.shape == (2, 1, 8, 8) and bool(x.isfinite().all()), name


def test_ode_encode_round_trip_on_the_mixture():
    den = Mixture(2)
    g = torch.Generator().manual_seed(0)
    x = (MEANS[torch.tensor([0, 1, 1])] + STD * torch.randn(3, 2, generator=g, dtype=torch.float64)).float()
    sigmas = karras_sigmas(40, den.sigma_min, den.sigma_max)
    z = samplers.ode_encode(den, x, sigmas[:-1].flip(0))
    back = samplers.heun(den, z, sigmas)
    assert (back - x).abs().max() < 0.02


# -- the command line ----------------------------------------------------------------------------

TINY_SCORE = ["--set", "unet.block_out_channels=[8,16]", "--set", "unet.attention_blocks=[1]",
              "--set", "unet.norm_groups=4", "--set", "train.preview=2", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def score_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ncsn"
    r = run_cli("train", "score", "--data", "digits", "--sde", "ve", "--steps", "4", "--batch-size", "8",
                "--out", str(out), "--quiet", *TINY_SCORE)
    assert r.code == 0, r.err
    return out


def test_cli_score_train_sample_encode_likelihood(score_run, tmp_path):
    import json

    for sampler in ("pc", "langevin", "heun", "euler-ancestral"):
        r = run_cli("sample", str(score_run), "-n", "2", "--sampler", sampler, "--steps", "3",
                    "--out", str(tmp_path / f"{sampler}.png"), "--quiet")
        assert r.code == 0, r.err
    digits = tmp_path / "digits"
    r = run_cli("sample", str(score_run), "-n", "2", "--sampler", "heun", "--steps", "3", "--out", str(digits) + "/", "--quiet")
    assert r.code == 0, r.err
    z = tmp_path / "z.safetensors"
    r = run_cli("encode", str(score_run), str(digits), "--sampler", "ode", "--steps", "3", "--out", str(z), "--quiet")
    assert r.code == 0, r.err
    r = run_cli("sample", str(score_run), "--init", str(z), "--sampler", "heun", "--steps", "3",
                "--out", str(tmp_path / "back.png"), "--quiet")
    assert r.code == 0, r.err
    r = run_cli("likelihood", str(score_run), "--data", "digits", "-n", "4", "--steps", "2", "--json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["family"] == "score" and 0 < rep["bpd"] < 20


def test_cli_errors_are_one_line(score_run, tiny_run):
    cases = [("train", "score", "--sde", "xx", "--steps", "1"), ("train", "ddpm", "--sde", "ve", "--steps", "1"),
             ("sample", str(score_run), "--sampler", "nope"), ("sample", str(score_run), "--sampler", "heun", "--snr", "0.1"),
             ("sample", str(tiny_run), "--sampler", "heun", "--eta", "0.5"),
             ("encode", str(score_run), "nowhere/", "--sampler", "ode"),
             ("likelihood", "gan", "--data", "digits", "-n", "2")]
    for args in cases:
        r = run_cli(*args)
        assert r.code != 0 or "n/a" in r.out + r.err, args
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) <= 1, (args, r.err)


def test_likelihood_for_every_family_kind():
    import json

    r = run_cli("likelihood", "flow", "--data", "mnist", "-n", "20", "--json")
    assert r.code == 0, r.err
    assert 1.0 < json.loads(r.out)["bpd"] < 3.0  # the bundled flow: ~1.53 bits/dim
    r = run_cli("likelihood", "gan", "--data", "mnist", "--json")
    assert r.code == 0 and json.loads(r.out)["bpd"] is None and "implicit" in json.loads(r.out)["n/a"]
    r = run_cli("likelihood", "flow", "--data", "mnist", "--steps", "3")
    assert r.code == 2 and "--steps applies to diffusion and score models" in r.err


def test_compare_likelihood_column_for_diffusion():
    from gmkit.compare import likelihood
    from gmkit.data import load_data

    model = _tiny_ddpm()
    model.likelihood_steps = 2
    cell = likelihood(model, load_data("digits", "test"), 500)
    assert "probability-flow ODE" in cell["text"] and cell["value"] > 0
    assert cell["images"] == model.compare_likelihood_images  # capped: the ODE is costly


def test_vp_sde_trains_and_samples(tmp_path):
    out = tmp_path / "vp"
    r = run_cli("train", "score", "--data", "digits", "--sde", "vp", "--steps", "2", "--batch-size", "8",
                "--out", str(out), "--quiet", *TINY_SCORE)
    assert r.code == 0, r.err
    from gmkit.registry import load

    net, _ = load(str(out))
    assert net.config.sde == "vp" and net.sde.sigma_max > 100  # continuous DDPM: sigma(1) = sqrt(e^10.05 - 1)
    x = net.sample([torch.Generator().manual_seed(0)], sampler="euler-ancestral", steps=3)
    assert x.shape == (1, 1, 8, 8) and bool(x.isfinite().all())


def test_bundled_score_model_draws_digits_and_inverts_through_the_ode():
    from gmkit.data import load_data
    from gmkit.metrics.mnist import extract, load_extractor
    from gmkit.registry import load

    net, src = load("score")
    assert src.defaults == {"sampler": "pc", "steps": 500} and net.config.sde == "ve"
    x = net.sample([torch.Generator().manual_seed(i) for i in range(32)], sampler="euler-ancestral", steps=30)
    probs = extract(load_extractor("mnist"), x)[0].softmax(1)
    assert float((probs.max(1).values > 0.9).float().mean()) > 0.35  # 0.53 measured; noise gives ~0
    assert len(set(probs.argmax(1).tolist())) >= 7
    real = load_data("mnist", "test").images()[::125][:4]
    z = net.encode(real, steps=18)["noise"]
    back = net.sample([torch.Generator().manual_seed(i) for i in range(4)], sampler="heun", steps=18, init=z)
    assert float((back - real).abs().mean()) < 0.02  # 0.0017 measured; a fresh draw is ~0.39 away


def test_score_min_snr_weighting_and_its_config_errors():
    """VE: SNR = 1 / sigma^2, so min-SNR-gamma on the epsilon loss weighs a level min(1, gamma sigma^2)."""
    from gmkit.families.score import Score, ScoreConfig
    from gmkit.nn.unet import UNetConfig

    unet = UNetConfig(sample_size=8, block_out_channels=[8, 16], attention_blocks=[1], norm_groups=4)
    net = Score(ScoreConfig(unet=unet, loss_weighting="min_snr", min_snr_gamma=4.0))
    sigma = torch.tensor([0.1, 0.5, 1.0, 10.0])
    w = net.process.loss_weights(1 / (1 + sigma ** 2))
    assert torch.allclose(w, (4.0 * sigma ** 2).clamp(max=1.0), rtol=1e-5)
    assert Score(ScoreConfig(unet=unet)).process.loss_weights(1 / (1 + sigma ** 2)) is None
    torch.manual_seed(0)
    loss = net({"image": torch.rand(32, 1, 8, 8) * 2 - 1})  # about half the levels drawn lie under sigma 0.5
    assert loss["loss"] < loss["mse"]  # and those count less
    for bad in ("loss_weighting=nope", "min_snr_gamma=0"):
        r = run_cli("train", "score", "--data", "digits", "--steps", "1", "--set", bad, *TINY_SCORE)
        assert r.code == 2 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
