"""GAN inversion: encode by optimising a latent (from random draws or an encoder's guess), decode by G."""

import pytest
import torch
from PIL import Image

from conftest import run_cli


def _tiny_gan(**kw):
    from gmkit.families.gan import GAN, GANConfig

    torch.manual_seed(0)
    return GAN(GANConfig(in_channels=1, image_size=8, latent_dim=4, g_channels=[16, 8], d_channels=[8, 16],
                         g_norm="none", **kw)).eval()


def test_inversion_finds_a_latent_that_reproduces_a_generated_image():
    net = _tiny_gan()
    with torch.no_grad():
        x = net.decode(torch.randn(6, 4, generator=torch.Generator().manual_seed(5)))
    start = net.encode(x, steps=0)
    found = net.encode(x, steps=150)
    assert found["z"].shape == (6, 4)
    assert float(found["error"].mean()) < 0.2 * float(start["error"].mean())
    assert torch.allclose((net.decode(found["z"]) - x).pow(2).flatten(1).mean(1), found["error"], atol=1e-5)


def test_encoder_learns_to_undo_the_generator_and_seeds_the_inversion():
    from gmkit.families.gan_inversion import encoder_step

    net = _tiny_gan(encoder_channels=[8, 16])
    opt = torch.optim.Adam(net.encoder.parameters(), lr=3e-3)
    torch.manual_seed(1)
    losses = [encoder_step(net.encoder, net.generator, opt, 32, 4, None, "cpu") for _ in range(60)]
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10]), losses
    x = net.decode(torch.randn(3, 4))
    with torch.no_grad():
        guess = net.encoder(x)
    assert torch.allclose(net.encode(x, steps=0)["z"], guess, atol=1e-6)  # steps 0: the encoder's guess


def test_gan_encode_decode_cli_round_trip(tmp_path):
    out = tmp_path / "gan"
    r = run_cli("train", "gan", "--data", "digits", "--steps", "3", "--batch-size", "16", "--out", str(out), "--quiet",
                "--set", "latent_dim=8", "--set", "g_channels=[16,8]", "--set", "d_channels=[8,16]",
                "--set", "encoder_channels=[8]", "--set", "train.preview=2")
    assert r.code == 0, r.err
    for i in range(2):
        Image.new("L", (8, 8), 40 + 100 * i).save(tmp_path / f"{i}.png")
    z = tmp_path / "z.safetensors"
    r = run_cli("encode", str(out), str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--steps", "5", "--out", str(z))
    assert r.code == 0, r.err
    r = run_cli("decode", str(out), str(z), "--out", str(tmp_path / "rec.png"))
    assert r.code == 0, r.err
    assert Image.open(tmp_path / "rec.png").size[0] > 8  # a grid of the two reconstructions
    r = run_cli("encode", str(out), str(tmp_path / "0.png"), "--steps", "-1", "--out", str(z))
    assert r.code == 2 and "--steps" in r.err


@pytest.mark.parametrize("bad", [torch.zeros(2, 5), torch.full((1, 8), float("nan"))])
def test_gan_decode_refuses_bad_latents(bad):
    from gmkit.errors import GmkitError

    with pytest.raises(GmkitError):
        _tiny_gan().decode(bad)
