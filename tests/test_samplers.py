"""Samplers, schedules and the diffusion process against data whose optimal denoiser is known.

For data x0 ~ N(mu, s^2), x_t = sqrt(a) x0 + sqrt(1-a) eps has the exact posterior mean
E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a). A correct sampler driven by this
perfect eps model (through the process's real Denoiser) must return samples with mean mu and
standard deviation s.
"""

import math

import pytest
import torch

from gmkit.diffusion import samplers
from gmkit.diffusion.process import DiffusionProcess, DiscreteLevels, ProcessConfig
from gmkit.diffusion.samplers import SAMPLERS
from gmkit.diffusion.schedules import (SIGMA_SCHEDULES, alphas_cumprod, cosine_betas, karras_sigmas, linear_betas,
                                       sampling_timesteps)

MU, S = 0.3, 0.2


def gaussian_net(levels, calls=None):
    """The optimal eps network for N(MU, S^2) data, conditioned as every gmkit network is: on c_noise."""
    def net(x, c):
        if calls is not None:
            calls.append(x.shape[0])
        a = (1 / (1 + levels.sigma(c.double()) ** 2)).float().view(-1, *([1] * (x.ndim - 1)))
        return (1 - a) ** 0.5 * (x - a ** 0.5 * MU) / (a * S ** 2 + 1 - a)
    return net


@pytest.fixture(scope="module")
def process():
    return DiffusionProcess.discrete(ProcessConfig(clip_sample=False))


@pytest.fixture(scope="module")
def den(process):
    return process.denoiser(gaussian_net(process.levels))


def moments(x):
    return float(x.mean()), float(x.std())


def start(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 1, 1, generator=g), g


def test_ddpm_recovers_gaussian(process, den):
    for steps, tol in ((1000, 0.01), (250, 0.02)):
        x, g = start()
        out = samplers.ddpm(den, x, process.sigmas("discrete", steps), noise=g)
        m, s = moments(out)
        assert abs(m - MU) < 0.01 and abs(s - S) < tol, (steps, m, s)


def ddim_predicted_std(acp, ts):
    """Deterministic DDIM on a Gaussian rotates (sqrt(a) s, sqrt(1-a)) by the angle between steps and
    shrinks the spread by cos(angle) each step: the exact discrete answer, derived independently."""
    theta = lambda a: math.atan2((1 - a) ** 0.5, a ** 0.5 * S)  # noqa: E731
    full = list(ts) + [-1]
    shrink = 1.0
    for t, tp in zip(full[:-1], full[1:]):
        a, ap = float(acp[t]), (1.0 if tp < 0 else float(acp[tp]))
        shrink *= math.cos(theta(a) - theta(ap))
    a_T = float(acp[ts[0]])
    return S * shrink / (a_T * S ** 2 + 1 - a_T) ** 0.5


@pytest.mark.parametrize("steps", [50, 200])
def test_ddim_matches_exact_discrete_solution(process, den, steps):
    x, _ = start(seed=1)
    out = samplers.ddim(den, x, process.sigmas("discrete", steps))
    m, s = moments(out)
    want = ddim_predicted_std(process.levels.alphas_cumprod, sampling_timesteps(1000, steps))
    assert abs(m - MU) < 0.01
    assert abs(s - want) < 0.004, (s, want)


def test_ddim_eta_one_recovers_gaussian(process, den):
    x, g = start(seed=1)
    m, s = moments(samplers.ddim(den, x, process.sigmas("discrete", 200), noise=g, eta=1.0))
    assert abs(m - MU) < 0.01 and abs(s - S) < 0.02, (m, s)


def test_ddim_is_deterministic_and_inverts(process, den):
    sigmas = process.sigmas("discrete", 50)
    x0 = MU + S * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    plain = samplers.ddim(den, samplers.ddim_invert(den, x0, sigmas), sigmas)
    noise = samplers.ddim_invert(den, x0, sigmas, refine=4)
    assert abs(float(noise.std()) - 1) < 0.15  # the latent looks like DDIM's starting noise
    back = samplers.ddim(den, noise, sigmas)
    # Fixed-point refinement turns the approximate inversion into the sampler's exact inverse.
    assert float((back - x0).abs().max()) < 1e-3 < float((plain - x0).abs().max())
    assert torch.equal(back, samplers.ddim(den, noise, sigmas))


@pytest.mark.parametrize("sampler", ["dpm++2m", "euler", "heun", "ddim"])
@pytest.mark.parametrize("schedule", ["karras", "exponential"])
def test_deterministic_samplers_with_sigma_schedules_recover_gaussian(process, den, sampler, schedule):
    """"DPM++ 2M Karras" and friends: any schedule with any sampler (the Gaussian's ODE solution has
    std S exactly, so enough steps of a correct solver land close; first-order ones need more). The
    model's own discrete levels are checked against DDIM's exact discrete answer above."""
    x, _ = start(5000, seed=3)
    out = SAMPLERS[sampler].fn(den, x, process.sigmas(schedule, 100 if sampler in ("euler", "ddim") else 40))
    m, s = moments(out)
    assert abs(m - MU) < 0.01 and abs(s - S) < 0.01, (m, s)


def test_euler_on_the_models_own_levels_is_ddim(process, den):
    """Euler on the probability-flow ODE at DDPM's discrete sigmas is DDIM with eta = 0 (Song et al.
    2021a, sec. 4.3); the timestep at a model's own level is its integer exactly."""
    x, _ = start(64, seed=4)
    sigmas = process.sigmas("discrete", 10)
    torch.testing.assert_close(samplers.euler(den, x, sigmas), samplers.ddim(den, x, sigmas), atol=1e-5, rtol=1e-5)


def test_network_calls_in_the_registry_are_what_samplers_do(process):
    for name, info in SAMPLERS.items():
        calls: list[int] = []
        den = process.denoiser(gaussian_net(process.levels, calls))
        x, g = start(2, seed=5)
        info.fn(den, x, process.sigmas(info.default_schedule, 6, info.solver_timesteps), noise=[g, g])
        assert len(calls) == info.calls(6) == samplers.network_calls(name, 6), name


def test_every_stochastic_sampler_draws_each_images_noise_from_its_own_generator(process, den):
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    for name, info in SAMPLERS.items():
        sigmas = process.sigmas(info.default_schedule, 5, info.solver_timesteps)
        kw = {"eta": 1.0} if "eta" in info.params else {}
        full = info.fn(den, samplers.randn((4, 1, 2, 2), gens([10, 11, 12, 13]), "cpu"), sigmas, noise=gens([10, 11, 12, 13]), **kw)
        one = info.fn(den, samplers.randn((1, 1, 2, 2), gens([12]), "cpu"), sigmas, noise=gens([12]), **kw)
        torch.testing.assert_close(one[0], full[2], msg=name)
        if info.stochastic:  # and another seed gives another image
            other = info.fn(den, samplers.randn((1, 1, 2, 2), gens([12]), "cpu"), sigmas, noise=gens([99]), **kw)
            assert not torch.equal(other, one), name


def test_per_sample_generators_make_images_independent_of_batch():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = samplers.randn((4, 1, 2, 2), gens([10, 11, 12, 13]), "cpu")
    single = samplers.randn((1, 1, 2, 2), gens([12]), "cpu")
    assert torch.equal(batch[2], single[0])


# -- schedules and the fractional-timestep rule ------------------------------------------------------

def test_timestep_spacings():
    assert sampling_timesteps(1000, 1000) == list(range(999, -1, -1))
    trailing = sampling_timesteps(1000, 50, "trailing")
    assert trailing[0] == 999 and len(trailing) == 50 and trailing == sorted(trailing, reverse=True)
    leading = sampling_timesteps(1000, 50, "leading", offset=1)
    assert leading[0] == 981 and leading[-1] == 1
    with pytest.raises(ValueError):
        sampling_timesteps(1000, 0)


def test_sigma_schedules_span_the_models_levels(process):
    for name, fn in SIGMA_SCHEDULES.items():
        s = fn(8, process.sigma_min, process.sigma_max)
        assert len(s) == 9 and float(s[-1]) == 0 and bool((s[1:] < s[:-1]).all()), name
        assert float(s[0]) == pytest.approx(process.sigma_max) and float(s[-2]) == pytest.approx(process.sigma_min)
    k = karras_sigmas(18, 0.002, 80.0)
    assert float(k[0]) == pytest.approx(80.0) and float(k[-2]) == pytest.approx(0.002)
    # DDIM honours set_alpha_to_one=False by ending on alpha-bar_0's level; other schedules end on 0.
    sd = DiffusionProcess.discrete(ProcessConfig(set_alpha_to_one=False))
    assert float(sd.sigmas("discrete", 5, ddim_final=True)[-1]) == sd.sigma_min
    assert float(sd.sigmas("discrete", 5)[-1]) == 0


def test_one_rule_for_fractional_timesteps(process):
    """log sigma is interpolated linearly between neighbouring timesteps (k-diffusion's rule); the
    model's own levels map to their integer timesteps exactly; alpha-bar follows sigma exactly."""
    lv = process.levels
    t = torch.tensor([0.0, 3.25, 500.5, 998.9], dtype=torch.float64)
    torch.testing.assert_close(lv.t(lv.sigma(t)), t)
    assert lv.t(lv.sigmas[[0, 17, 999]]).tolist() == [0.0, 17.0, 999.0]
    mid = lv.sigma(torch.tensor([10.5], dtype=torch.float64))
    assert float(mid.log()) == pytest.approx(float(lv.log_sigmas[10:12].mean()))
    assert lv.alpha_bar(float(lv.sigmas[17])) == float(lv.alphas_cumprod[17])
    assert lv.alpha_bar(float(mid)) == pytest.approx(1 / (1 + float(mid) ** 2))
    assert lv.alpha_bar(0.0) == 1.0


def test_cosine_schedule_ends_near_pure_noise():
    acp = alphas_cumprod(cosine_betas(1000))
    assert float(acp[0]) > 0.999 and float(acp[-1]) < 1e-4
    assert bool((acp[1:] < acp[:-1]).all())


# -- the process: noising, targets, denoiser, loss weighting -----------------------------------------

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample", "score"])
def test_q_sample_target_and_denoiser_agree(prediction):
    """A network that outputs the exact training target for (x0, z) must denoise x_t back to x0."""
    p = DiffusionProcess(DiscreteLevels(alphas_cumprod(linear_betas(1000))), prediction)
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    for t in (5, 400, 997):
        sigma = float(p.levels.sigmas[t])
        a = p.alpha_bar(sigma)
        x_t = p.q_sample(x0, a, z)
        assert torch.allclose(x_t, a ** 0.5 * x0 + (1 - a) ** 0.5 * z)
        den = p.denoiser(lambda x, c: p.target(x0, z, a))
        torch.testing.assert_close(den.eps(x_t, sigma), z, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(den(x_t / a ** 0.5, sigma), x0, atol=2e-4 * (1 + sigma), rtol=1e-4)
    # per-sample levels, as training draws them
    a = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    x_t = p.q_sample(x0, a, z)
    torch.testing.assert_close(x_t[1], 0.5 ** 0.5 * (x0[1] + z[1]))


def test_loss_weighting_hook_min_snr():
    lv = DiscreteLevels(alphas_cumprod(linear_betas(1000)))
    a = torch.tensor([0.999, 0.5, 0.001], dtype=torch.float64)
    snr = a / (1 - a)
    assert DiffusionProcess(lv, "epsilon").loss_weights(a) is None  # plain MSE by default
    w = DiffusionProcess(lv, "epsilon", loss_weighting="min_snr", min_snr_gamma=5).loss_weights(a)
    torch.testing.assert_close(w, snr.clamp(max=5) / snr)
    assert float(w[1]) == 1 and float(w[0]) < 0.01  # low-noise steps, which dominate eps-MSE's x0 error, count less
    wv = DiffusionProcess(lv, "v_prediction", loss_weighting="min_snr", min_snr_gamma=5).loss_weights(a)
    torch.testing.assert_close(wv, snr.clamp(max=5) / (snr + 1))
    p = DiffusionProcess(lv, "epsilon", loss_weighting="min_snr")
    out = p.loss(lambda x, c: torch.zeros_like(x), torch.randn(4, 1, 4, 4))
    assert out["loss"].ndim == 0 and "mse" in out
    with pytest.raises(ValueError, match="loss_weighting"):
        DiffusionProcess(lv, "epsilon", loss_weighting="nope")


def test_cli_dpmpp_2m_karras_and_setting_errors_named_as_flags(tiny_run, tmp_path):
    """"DPM++ 2M Karras" from the command line; library errors name the setting, the CLI the flag."""
    from conftest import run_cli

    r = run_cli("sample", str(tiny_run), "--sampler", "dpm++2m", "--schedule", "karras", "--steps", "4", "-n", "2",
                "--out", str(tmp_path / "x.png"), "--json")
    assert r.code == 0, r.err
    for args, message in ((["--class", "3"], "--class cannot be used: this ddpm model is unconditional"),
                          (["--sampler", "heun", "--snr", "0.1"], "--snr applies to the pc sampler, not heun"),
                          (["--schedule", "cosine"], "--schedule must be one of discrete, karras"),
                          (["--steps", "500"], "--steps must be between 1 and 100 for this model")):
        r = run_cli("sample", str(tiny_run), *args, "--out", str(tmp_path / "y.png"))
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, (args, r.err)
