"""Image editing and restoration: img2img (SDEdit), inpainting (RePaint), super-resolution (SR3)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from conftest import data_images, run_cli
from gmkit.diffusion import editing, samplers
from gmkit.diffusion.process import DiffusionProcess, ProcessConfig
from gmkit.diffusion.samplers import SAMPLERS
from gmkit.errors import OptionError
from gmkit.imageio import load_input_image, load_mask

PROCESS = DiffusionProcess.discrete(ProcessConfig(num_train_timesteps=100, clip_sample=False))


def _oracle(target: torch.Tensor):
    """The denoiser of a perfect model whose data is the single image ``target``."""
    def net(x, c):
        a = PROCESS.alpha_bar(float(PROCESS.levels.sigma(c[:1].double())))
        return (x - a ** 0.5 * target) / (1 - a) ** 0.5
    return PROCESS.denoiser(net)


def _digit(path, size=8, shape="ellipse"):
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    (d.ellipse if shape == "ellipse" else d.rectangle)((1, 1, size - 2, size - 2), fill=255)
    im.save(path)
    return path


def _half_mask(path, size=8, fill=255):
    m = Image.new("L", (size, size), 0)
    ImageDraw.Draw(m).rectangle((size // 2, 0, size, size), fill=fill)
    m.save(path)
    return path


# -- the pure functions ----------------------------------------------------------------------------

def test_strength_picks_the_tail_of_the_schedule():
    sigmas = torch.arange(10, -1, -1, dtype=torch.float64)  # 10 steps, noisiest first, then 0
    assert len(editing.strength_sigmas(sigmas, 0)) == 1  # no step left
    assert torch.equal(editing.strength_sigmas(sigmas, 1), sigmas)
    assert editing.strength_sigmas(sigmas, 0.3).tolist() == [3, 2, 1, 0]


def test_repaint_schedule_goes_down_with_jumps_back():
    assert editing.repaint_schedule(7, jump=3, resample=1) == list(range(8))
    path = editing.repaint_schedule(10, jump=3, resample=4)
    assert path[0] == 0 and path[-1] == 10 and min(path) >= 0 and max(path) <= 10
    downs = sum(b == a + 1 for a, b in zip(path, path[1:]))
    ups = sum(b < a for a, b in zip(path, path[1:]))
    assert ups == 3 * 3 and downs == 10 + 3 * 3 * 3  # 3 full blocks of 3 redone 3 times; the last block is not


def test_sdedit_and_repaint_with_a_perfect_model():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    target = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    sigmas = PROCESS.sigmas("discrete", 10)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    den = _oracle(target)
    x = PROCESS.q_sample(image, PROCESS.alpha_bar(float(sigmas[0])), samplers.randn(image.shape, gens, "cpu"))
    out = samplers.ddim(den, x, sigmas)
    assert torch.allclose(out, target, atol=1e-4)  # SDEdit lands on the model's data
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1

    def step(x, s, s_next):
        return samplers.ddpm(den, x, [s, s_next], noise=gens)

    out = editing.repaint(step, PROCESS, samplers.randn((2, 1, 8, 8), gens, "cpu"), image, mask, sigmas, gens,
                          jump=3, resample=3)
    assert torch.equal(out[..., :4], image[..., :4])  # the known region exactly
    assert torch.allclose(out[..., 4:], target[..., 4:], atol=1e-4)  # the hole from the model
    # the masked-denoiser scheme of the deterministic solvers: the known region follows the image
    masked = editing.MaskedDenoiser(den, image, mask.expand(2, -1, -1, -1))
    out = samplers.dpmpp_2m(masked, samplers.randn((2, 1, 8, 8), gens, "cpu"), PROCESS.sigmas("discrete", 10, solver=True))
    assert torch.allclose(out[..., :4], image[..., :4], atol=1e-4) and torch.allclose(out[..., 4:], target[..., 4:], atol=1e-4)


def test_mask_to_latent_size_keeps_every_touched_cell():
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 3, 3] = 1
    small = editing.mask_to(m, (4, 4))
    assert small.sum() == 1 and small[0, 0, 1, 1] == 1


# -- every sampler x {pixel, latent} x {sample, img2img, inpaint} on tiny random models --------------

class _StubText:
    """A stand-in text encoder (deterministic states per prompt), so the latent model needs no download."""

    dim, max_length = 8, 8

    def encode(self, prompts):
        states = torch.stack([torch.randn(3, self.dim, generator=torch.Generator().manual_seed(len(p))) for p in prompts])
        return states, torch.ones(len(prompts), 3, dtype=torch.bool)


@pytest.fixture(scope="module")
def tiny_models():
    from gmkit.families.autoencoder import AutoencoderConfig
    from gmkit.families.ddpm import DDPM, DDPMConfig
    from gmkit.families.ldm import LDM, LDMConfig
    from gmkit.nn.autoencoder_kl import AutoencoderKLConfig
    from gmkit.nn.unet import UNetConfig

    torch.manual_seed(0)
    unet = UNetConfig(sample_size=8, block_out_channels=[8, 16], attention_blocks=[1], norm_groups=4, head_dim=8)
    ddpm = DDPM(DDPMConfig(unet=unet, num_train_timesteps=100)).eval()
    vae = AutoencoderKLConfig(block_out_channels=[8, 8], norm_num_groups=4, mid_attention=False)
    ldm = LDM(LDMConfig(image_size=8, in_channels=1, autoencoder=AutoencoderConfig(vae=vae), latent_scale=1.0,
                        unet=dataclasses.replace(unet, cross_attention_dim=8), num_train_timesteps=100)).eval()
    ldm._text = _StubText()
    return {"pixel": ddpm, "latent": ldm}


@pytest.mark.parametrize("space", ["pixel", "latent"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_samples_edits_and_inpaints(tiny_models, space, sampler):
    net = tiny_models[space]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    opts = {"sampler": sampler, "steps": 3}
    if space == "latent":
        opts["prompt"] = "a digit"
    x = net.sample(gens(), **opts)
    assert x.shape == (2, 1, 8, 8) and bool(x.isfinite().all()) and float(x.abs().max()) <= 1
    default = SAMPLERS[sampler].default_schedule.replace("geometric", "exponential")  # two names, one schedule
    for schedule in ("discrete", "karras", "exponential"):  # any schedule with any sampler
        other = net.sample(gens(), schedule=schedule, **opts)
        assert bool(other.isfinite().all()) and (schedule == default) == torch.equal(other, x), schedule
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    edited = net.sample(gens(), image=image, strength=0.5, **opts)
    assert edited.shape == (2, 1, 8, 8) and bool(edited.isfinite().all())
    assert not torch.equal(edited, x)  # another start: the noised image
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1
    extra = {"resample": 2, "jump": 2} if SAMPLERS[sampler].inpaint == "repaint" else {}
    filled = net.sample(gens(), image=image, mask=mask, **opts, **extra)
    assert torch.equal(filled[..., :4], image.expand(2, -1, -1, -1)[..., :4])  # the known region exactly
    assert bool(filled.isfinite().all()) and (filled[..., 4:] - image[..., 4:]).abs().max() > 0.01
    if not extra:  # RePaint's settings do not apply to the masked scheme: said, naming the setting
        with pytest.raises(OptionError, match="RePaint") as e:
            net.sample(gens(), image=image, mask=mask, resample=2, **opts)
        assert e.value.setting == "resample"


# -- img2img from the command line -----------------------------------------------------------------

def test_strength_zero_returns_the_input(tiny_run, tmp_path):
    src = _digit(tmp_path / "digit.png")
    out = tmp_path / "same.png"
    r = run_cli("sample", str(tiny_run), "--image", str(src), "--strength", "0", "--out", str(out))
    assert r.code == 0, r.err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))


def test_strength_one_ignores_the_input(tiny_run, tmp_path):
    a, b = _digit(tmp_path / "a.png"), _digit(tmp_path / "b.png", shape="rect")
    outs = []
    for i, args in enumerate((["--image", str(a), "--strength", "1"], ["--image", str(b), "--strength", "1"], [])):
        t = tmp_path / f"{i}.safetensors"
        r = run_cli("sample", str(tiny_run), "-n", "2", "--sampler", "ddim", "--steps", "10", *args, "--out", str(t))
        assert r.code == 0, r.err
        outs.append(load_file(t)["images"])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m"])
def test_variations_of_one_image(tiny_run, tmp_path, sampler):
    src = _digit(tmp_path / "digit.png")
    t = tmp_path / "v.safetensors"
    eta = ["--eta", "1"] if sampler == "ddim" else []  # deterministic DDIM varies through the starting noise alone
    r = run_cli("sample", str(tiny_run), "--image", str(src), "--strength", "0.5", "-n", "4", "--sampler", sampler,
                "--steps", "10", *eta, "--out", str(t))
    assert r.code == 0, r.err
    x = load_file(t)["images"]
    assert x.shape == (4, 1, 8, 8)
    assert all(not torch.equal(x[i], x[j]) for i in range(4) for j in range(i))


# -- inpainting ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_inpainting_keeps_the_known_region(tiny_run, tmp_path, sampler):
    src, hole = _digit(tmp_path / "digit.png"), _half_mask(tmp_path / "hole.png", size=32)  # mask of another size
    t = tmp_path / "filled.safetensors"
    r = run_cli("sample", str(tiny_run), "--image", str(src), "--mask", str(hole), "--sampler", sampler, "--steps", "20",
                "--resample", "2", "--jump", "5", "-n", "2", "--out", str(t))
    assert r.code == 0, r.err
    assert "mask resized to the image" in r.err
    x = load_file(t)["images"]
    im, _ = load_input_image(str(src), 1, lambda h, w: (8, 8), quiet=True)
    assert torch.equal(x[..., :4], im.expand(2, -1, -1, -1)[..., :4])
    assert (x[..., 4:] - im[..., 4:]).abs().max() > 0.1


def test_all_black_and_all_white_masks_are_explained(tiny_run, tmp_path):
    src = _digit(tmp_path / "digit.png")
    black, white = tmp_path / "black.png", tmp_path / "white.png"
    Image.new("L", (8, 8), 0).save(black)
    Image.new("L", (8, 8), 255).save(white)
    out = tmp_path / "same.png"
    r = run_cli("sample", str(tiny_run), "--image", str(src), "--mask", str(black), "--steps", "5", "--out", str(out))
    assert r.code == 0 and "all black" in r.err and "nothing to fill" in r.err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))
    r = run_cli("sample", str(tiny_run), "--image", str(src), "--mask", str(white), "--steps", "5", "--out", str(out))
    assert r.code == 0 and "all white" in r.err


def test_grey_mask_levels_are_thresholded(tmp_path):
    p = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 100], [160, 255]], dtype=np.uint8)).save(p)
    m = load_mask(str(p), (2, 2), (2, 2), quiet=True)
    assert m.flatten().tolist() == [0, 0, 1, 1]


# -- inputs and errors -----------------------------------------------------------------------------

def test_image_from_stdin_any_size_and_colour(tiny_run, tmp_path):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (50, 30), (200, 30, 30)).save(buf, format="JPEG")
    r = run_cli("sample", str(tiny_run), "--image", "-", "--strength", "0.3", "--steps", "10", "--out", "-",
                stdin=buf.getvalue())
    assert r.code == 0, r.err
    assert "centre-cropped and resized to 8x8" in r.err and "greyscale" in r.err
    assert Image.open(io.BytesIO(r.raw)).size == (8, 8)


@pytest.mark.parametrize("args, message", [
    (["--strength", "1.5"], "--strength must be between 0 and 1"),
    (["--strength", "-0.1"], "--strength must be between 0 and 1"),
    (["--mask", "m.png"], "add --image"),
    (["--image", "-", "--prompt", "-"], "both read stdin"),
    (["--image", "x.png", "--resample", "3"], "add --mask"),
])
def test_bad_edit_options_are_one_line_errors(tiny_run, args, message):
    r = run_cli("sample", str(tiny_run), *args)
    assert r.code != 0 and message in r.err and "Traceback" not in r.err


def test_image_for_a_family_that_cannot_use_it_names_those_that_can(tmp_path):
    src = _digit(tmp_path / "digit.png")
    for model in ("gan", "flow", "vae"):
        r = run_cli("sample", model, "--image", str(src))
        assert r.code != 0 and f"{model} models do not take --image" in r.err
        assert "ddpm" in r.err and "ldm" in r.err and "sr" in r.err


def test_inpainting_with_an_ode_solver_names_repaints_settings(tiny_run, tmp_path):
    src, hole = _digit(tmp_path / "digit.png"), _half_mask(tmp_path / "hole.png")
    r = run_cli("sample", str(tiny_run), "--image", str(src), "--mask", str(hole), "--sampler", "heun", "--steps", "3",
                "--out", str(tmp_path / "x.png"))
    assert r.code == 0, r.err
    r = run_cli("sample", str(tiny_run), "--image", str(src), "--mask", str(hole), "--sampler", "heun", "--jump", "3")
    assert r.code == 2 and "--jump applies to RePaint inpainting" in r.err and "Traceback" not in r.err


# -- latent diffusion ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm") / "run"
    r = run_cli("train", "ldm", "--data", "mnist-captions", "--ae-steps", "4", "--steps", "4", "--batch-size", "8",
                "--out", str(out), "--quiet", "--set", "unet.block_out_channels=[32,32]",
                "--set", "autoencoder.vae.block_out_channels=[8,16,16]", "--set", "train.preview=0")
    assert r.code == 0, r.err
    return out


def test_ldm_img2img_and_inpainting(tiny_ldm, tmp_path):
    src, hole = _digit(tmp_path / "digit.png", size=28), _half_mask(tmp_path / "hole.png", size=28)
    im, _ = load_input_image(str(src), 1, lambda h, w: (28, 28), quiet=True)
    t = tmp_path / "x.safetensors"
    r = run_cli("sample", str(tiny_ldm), "--image", str(src), "--strength", "0", "--out", str(t))
    assert r.code == 0, r.err
    assert torch.equal(load_file(t)["images"], im)
    r = run_cli("sample", str(tiny_ldm), "--image", str(src), "--strength", "0.6", "--prompt", "a handwritten 7",
                "--steps", "10", "--out", str(t))
    assert r.code == 0, r.err
    assert (load_file(t)["images"] - im).abs().max() > 0.1
    r = run_cli("sample", str(tiny_ldm), "--image", str(src), "--mask", str(hole), "--prompt", "digit one",
                "--steps", "10", "--resample", "2", "--out", str(t))
    assert r.code == 0, r.err
    x = load_file(t)["images"]
    assert torch.equal(x[..., :14], im[..., :14])  # known pixels kept (the latent mask covers the hole and more)
    assert (x[..., 14:] - im[..., 14:]).abs().max() > 0.1


# -- super-resolution ------------------------------------------------------------------------------

def test_train_sr_and_upsample_a_file(tmp_path):
    out = tmp_path / "sr"
    r = run_cli("train", "sr", "--data", "digits", "--image-size", "16", "--scale", "2", "--steps", "3", "--batch-size", "8",
                "--out", str(out), "--quiet", "--set", "unet.block_out_channels=[8,16,16]", "--set", "unet.norm_groups=4",
                "--set", "num_train_timesteps=50", "--set", "train.preview=2")
    assert r.code == 0, r.err
    small = tmp_path / "small.png"
    Image.new("L", (12, 10), 128).save(small)
    big = tmp_path / "big.png"
    r = run_cli("sample", str(out), "--image", str(small), "--steps", "4", "--out", str(big))
    assert r.code == 0, r.err
    assert "resized" not in r.err and Image.open(big).size == (24, 20)  # any size that fits the UNet (even sides here)
    Image.new("L", (11, 9), 128).save(small)
    r = run_cli("sample", str(out), "--image", str(small), "--steps", "4", "--out", str(big))
    assert r.code == 0 and "resized to 12x10" in r.err and Image.open(big).size == (24, 20)
    r = run_cli("sample", str(out), "--image", str(small), "--mask", str(small))
    assert r.code != 0 and "sr models do not take --mask" in r.err
    r = run_cli("sample", str(out))
    assert r.code != 0 and "--image is needed" in r.err


def test_scale_is_for_sr_only():
    r = run_cli("train", "ddpm", "--scale", "2", "--steps", "1")
    assert r.code != 0 and "--scale applies to super-resolution" in r.err


def test_bundled_sr_beats_bicubic_on_held_out_emoji():
    """Six emoji of OpenMoji's held-out split (every 10th, never trained on), rendered at 128 px."""
    from pathlib import Path

    from gmkit.families.sr import degrade, upsample
    from gmkit.metrics.restoration import psnr
    from gmkit.registry import load

    data = np.load(Path(__file__).parent / "data" / "openmoji-heldout-128.npz")
    high = torch.from_numpy(data["x"]).float() / 127.5 - 1
    high = high[:6, :, 32:96, 32:96]  # centre crops, 16 -> 64 px, keep the test fast
    net, _ = load("sr")
    low = degrade(high, net.config.scale)
    gens = [torch.Generator().manual_seed(i) for i in range(len(high))]
    with torch.inference_mode():
        out = net.sample(gens, image=low, sampler="ddim", steps=20)  # the bundled default
    gain = psnr(out, high) - psnr(upsample(low, net.config.scale), high)
    assert float(gain.mean()) > 1.0 and int((gain > 0).sum()) >= 5, gain  # dB over bicubic


def test_bundled_sr_mnist_beats_bicubic_on_held_out_digits():
    """Six held-out MNIST digits, 7 -> 28 px (the OpenMoji model is no better than bicubic on them)."""
    from gmkit.data import load_data
    from gmkit.families.sr import degrade, upsample
    from gmkit.metrics.restoration import psnr
    from gmkit.registry import load

    high = data_images(load_data("mnist", "test"))[:6]
    net, src = load("sr-mnist")
    low = degrade(high, net.config.scale)
    gens = [torch.Generator().manual_seed(i) for i in range(len(high))]
    with torch.inference_mode():
        out = net.sample(gens, image=low, **src.defaults)
    gain = psnr(out, high) - psnr(upsample(low, net.config.scale), high)
    assert out.shape == high.shape and float(gain.mean()) > 2.0 and int((gain > 0).sum()) == 6, gain


def test_chained_through_stdin(tiny_run):
    r = run_cli("sample", str(tiny_run), "--steps", "5", "--out", "-", "-n", "1")
    assert r.code == 0
    r = run_cli("sample", "sr", "--image", "-", "--steps", "3", "--out", "-", stdin=r.raw)
    assert r.code == 0, r.err
    import io

    assert Image.open(io.BytesIO(r.raw)).size == (32, 32)  # 8x8 grey digit -> 32x32 RGB
