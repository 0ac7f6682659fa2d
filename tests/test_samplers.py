"""Samplers against a data distribution whose optimal denoiser is known in closed form.

For data x0 ~ N(mu, s^2), x_t = sqrt(a) x0 + sqrt(1-a) eps has the exact posterior mean
E[eps | x_t] = sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a). A correct sampler driven by this
perfect eps model must return samples with mean mu and standard deviation s.
"""

import math

import pytest
import torch

from gmkit.diffusion import samplers
from gmkit.diffusion.schedules import alphas_cumprod, cosine_betas, linear_betas, sampling_timesteps

MU, S = 0.3, 0.2


def gaussian_eps(acp):
    def eps(x, t):
        a = float(acp[t])
        return (1 - a) ** 0.5 * (x - a ** 0.5 * MU) / (a * S ** 2 + 1 - a)
    return eps


@pytest.fixture
def acp():
    return alphas_cumprod(linear_betas(1000))


def moments(x):
    return float(x.mean()), float(x.std())


def test_ddpm_recovers_gaussian(acp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, 1, 1, generator=g)
    out = samplers.ddpm(gaussian_eps(acp), x, sampling_timesteps(1000, 1000), acp, noise=g, clip=False)
    m, s = moments(out)
    assert abs(m - MU) < 0.01 and abs(s - S) < 0.01, (m, s)


def test_ddpm_respaced_steps_stay_close(acp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 1, 1, 1, generator=g)
    out = samplers.ddpm(gaussian_eps(acp), x, sampling_timesteps(1000, 250), acp, noise=g, clip=False)
    m, s = moments(out)
    assert abs(m - MU) < 0.01 and abs(s - S) < 0.02, (m, s)


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
def test_ddim_matches_exact_discrete_solution(acp, steps):
    ts = sampling_timesteps(1000, steps)
    g = torch.Generator().manual_seed(1)
    out = samplers.ddim(gaussian_eps(acp), torch.randn(20000, 1, 1, 1, generator=g), ts, acp, eta=0.0, clip=False)
    m, s = moments(out)
    assert abs(m - MU) < 0.01
    assert abs(s - ddim_predicted_std(acp, ts)) < 0.004, (s, ddim_predicted_std(acp, ts))


def test_ddim_eta_one_recovers_gaussian(acp):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 1, 1, 1, generator=g)
    out = samplers.ddim(gaussian_eps(acp), x, sampling_timesteps(1000, 200), acp, eta=1.0, noise=g, clip=False)
    m, s = moments(out)
    assert abs(m - MU) < 0.01 and abs(s - S) < 0.02, (m, s)


def test_ddim_is_deterministic_and_inverts(acp):
    ts = sampling_timesteps(1000, 50)
    x0 = MU + S * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    eps = gaussian_eps(acp)
    plain = samplers.ddim(eps, samplers.ddim_invert(eps, x0, ts, acp), ts, acp, clip=False)
    noise = samplers.ddim_invert(eps, x0, ts, acp, refine=4)
    assert abs(float(noise.std()) - 1) < 0.15  # the latent looks like DDIM's starting noise
    back = samplers.ddim(eps, noise, ts, acp, eta=0.0, clip=False)
    # Fixed-point refinement turns the approximate inversion into the sampler's exact inverse.
    assert float((back - x0).abs().max()) < 1e-3 < float((plain - x0).abs().max())
    assert torch.equal(back, samplers.ddim(eps, noise, ts, acp, eta=0.0, clip=False))


def test_per_sample_generators_make_images_independent_of_batch():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = samplers.randn((4, 1, 2, 2), gens([10, 11, 12, 13]), "cpu")
    single = samplers.randn((1, 1, 2, 2), gens([12]), "cpu")
    assert torch.equal(batch[2], single[0])


def test_timestep_spacings():
    assert sampling_timesteps(1000, 1000) == list(range(999, -1, -1))
    trailing = sampling_timesteps(1000, 50, "trailing")
    assert trailing[0] == 999 and len(trailing) == 50 and trailing == sorted(trailing, reverse=True)
    leading = sampling_timesteps(1000, 50, "leading", offset=1)
    assert leading[0] == 981 and leading[-1] == 1
    with pytest.raises(ValueError):
        sampling_timesteps(1000, 0)


def test_cosine_schedule_ends_near_pure_noise():
    acp = alphas_cumprod(cosine_betas(1000))
    assert float(acp[0]) > 0.999 and float(acp[-1]) < 1e-4
    assert bool((acp[1:] < acp[:-1]).all())
