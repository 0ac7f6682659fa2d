"""pix2pix and CycleGAN: paired/unpaired data, losses that fall, any input size, clear errors, exact resume."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli

TINY = ["--set", "g_channels=[8,16]", "--set", "d_channels=[8,16]", "--set", "train.preview=2",
        "--set", "train.log_every=1", "--set", "pool_size=3"]
P2P_TINY = TINY[:-2]  # pix2pix has no image pool


def _shape_pair(i: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A black outline of a square (source) and the same square filled with a colour (target)."""
    rng = np.random.default_rng(i)
    a, b = (int(v) for v in sorted(rng.integers(2, size - 2, 2)))
    b = max(b, a + 3)
    line = np.full((size, size), 255, np.uint8)
    line[a:b, a] = line[a:b, b - 1] = line[a, a:b] = line[b - 1, a:b] = 0
    colour = np.full((size, size, 3), 255, np.uint8)
    colour[a:b, a:b] = rng.integers(0, 255, 3)
    colour[line == 0] = 0
    return line, colour


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    (root / "lines").mkdir()
    (root / "colour").mkdir()
    for i in range(12):
        line, colour = _shape_pair(i)
        Image.fromarray(line).save(root / "lines" / f"{i:02d}.png")
        Image.fromarray(colour).save(root / "colour" / f"{i:02d}.jpg" if i == 0 else root / "colour" / f"{i:02d}.png")
    return root


def _train(family, data, out, steps, *extra):
    r = run_cli("train", family, *data, "--steps", str(steps), "--batch-size", "4", "--out", str(out), "--quiet",
                "--checkpoint-every", "100", *(P2P_TINY if family == "pix2pix" else TINY), *extra)
    assert r.code == 0, r.err
    return r


@pytest.fixture(scope="module")
def p2p_run(pair_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("p2p") / "run"
    _train("pix2pix", ["--data", f"{pair_dirs / 'lines'}:{pair_dirs / 'colour'}"], out, 3)
    return out


# -- data ---------------------------------------------------------------------------------------

def test_line_art_svg_removes_nested_fill_groups_whole():
    from gmkit.data.paired import line_art_svg

    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><g id="color"><g id="inner"><rect width="5" '
           'height="5" fill="red"/></g><circle r="3" fill="blue"/></g><g id="skin"><rect fill="#fcea2b"/></g>'
           '<g id="line"><g id="line-2"><path d="M0 0L9 9" stroke="#000"/></g></g><g id="line-supplement"/></svg>')
    out = line_art_svg(svg)
    assert "red" not in out and "blue" not in out and "fcea2b" not in out  # the whole colour group, nested parts too
    assert 'id="line"' in out and 'id="line-2"' in out and "M0 0L9 9" in out and 'id="line-supplement"' in out


def test_openmoji_line_art_is_aligned_with_the_colour_emoji():
    pytest.importorskip("resvg_py")
    from gmkit.data.captioned import _openmoji_root
    from gmkit.data.paired import _render, line_art_svg

    text = (_openmoji_root() / "svg" / "1F600.svg").read_text()
    colour, line = _render(text, 64).astype(int), _render(line_art_svg(text), 64).astype(int)
    ink = line.mean(0) < 80  # the line drawing's strokes
    assert 100 < ink.sum() < 0.5 * 64 * 64
    assert colour.mean(0)[ink].mean() < 90  # the same strokes are dark in the colour emoji
    assert (np.abs(colour - line).sum(0) > 60).mean() > 0.2  # and the fills were removed


def test_folder_pairs_match_by_name_and_jitter_keeps_pairs_aligned(pair_dirs):
    from gmkit.data.paired import jitter_and_flip, load_pairs

    d = load_pairs(f"{pair_dirs / 'lines'}:{pair_dirs / 'colour'}").tensors()
    assert d["image"].shape == (12, 3, 16, 16) and d["source"].shape == (12, 1, 16, 16)
    line, colour = _shape_pair(3)
    assert torch.equal(d["source"][3, 0], torch.from_numpy(line).float() / 127.5 - 1)
    assert torch.allclose(d["image"][3], torch.from_numpy(colour).permute(2, 0, 1).float() / 127.5 - 1)
    x = torch.randn(6, 3, 16, 16)
    torch.manual_seed(0)
    a, b = jitter_and_flip([x, x.clone()], 4, True)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_metadata_pairs_and_unpaired_domains(pair_dirs, tmp_path):
    from gmkit.data import DataOptions
    from gmkit.data.paired import load_domain, load_pairs, load_unpaired

    rows = [{"source": f"lines/{i:02d}.png", "target": f"colour/{i:02d}.png"} for i in range(1, 6)]
    (pair_dirs / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        d = load_pairs(str(pair_dirs))
    finally:
        (pair_dirs / "metadata.jsonl").unlink()
    assert len(d) == 5 and d.shapes["source"][0] == 1
    few = tmp_path / "few"
    few.mkdir()
    for i in range(5):
        Image.fromarray(_shape_pair(i, 32)[1]).save(few / f"{i}.png")
    u = load_unpaired(str(pair_dirs / "lines"), str(few)).tensors()
    assert u["image"].shape == (12, 3, 16, 16) and u["source"].shape == (12, 1, 16, 16)  # B brought to A's size
    def rows(x):
        return sorted(v.numpy().tobytes() for v in x)

    lines = load_domain(str(pair_dirs / "lines"), DataOptions())[0].images()
    assert rows(u["source"]) == rows(lines)  # the larger domain: each image once
    b = rows(load_domain(str(few), DataOptions(image_size=16))[0].images())
    assert len(b) == 5
    assert sorted(set(rows(u["image"]))) == sorted(set(b)) and len(rows(u["image"])) == 12  # the smaller one repeated


@pytest.mark.parametrize("case", ["missing", "shapes", "metadata", "data_b", "no_b", "channels"])
def test_bad_translation_data_gives_one_clear_line(pair_dirs, tmp_path, case):
    src, tgt = tmp_path / "a", tmp_path / "b"
    src.mkdir()
    tgt.mkdir()
    for name, size in (("x", (16, 16)), ("y", (16, 16))):
        Image.new("L", size, 255).save(src / f"{name}.png")
    Image.new("RGB", (16, 16)).save(tgt / "x.png")
    Image.new("RGB", (16, 32) if case == "shapes" else (16, 16)).save(tgt / ("y.png" if case != "missing" else "z.png"))
    family, data, want = "pix2pix", ["--data", f"{src}:{tgt}"], {
        "missing": "has no partner in", "shapes": "different shapes", "data_b": "--data-b applies to cyclegan",
        "no_b": "needs two domains", "metadata": "does not exist", "channels": "maps 1-channel images"}[case]
    if case == "metadata":
        (src / "metadata.jsonl").write_text('{"source": "x.png", "target": "nothere.png"}\n')
        data = ["--data", str(src)]
    elif case == "data_b":
        data += ["--data-b", str(tgt)]
    elif case == "no_b":
        family, data = "cyclegan", ["--data", str(src)]
    elif case == "channels":  # a run trained on grey inputs, resumed on colour ones
        _train("pix2pix", data, tmp_path / "run", 1)
        for name in ("x", "y"):
            Image.new("RGB", (16, 16), (200, 10, 10)).save(src / f"{name}.png")
        data = ["--data", f"{src}:{tgt}", "--resume", str(tmp_path / "run"), "--steps", "2"]
    r = run_cli("train", family, *data, "--steps", "1", "--out", str(tmp_path / "run"), "--quiet")
    assert r.code == 2 and want in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


# -- training -----------------------------------------------------------------------------------

def _losses_fall(family: str, key: str):
    from gmkit.families.cyclegan import CycleGAN
    from gmkit.families.pix2pix import Pix2Pix

    torch.manual_seed(0)
    cls = {"pix2pix": Pix2Pix, "cyclegan": CycleGAN}[family]
    cfg = cls.Config(image_size=16, source_channels=1, in_channels=3, g_channels=[8, 16], d_channels=[8, 16], jitter=0)
    net = cls(cfg).train()
    pairs = [_shape_pair(i) for i in range(8)]
    src = torch.tensor(np.stack([p[0] for p in pairs]))[:, None].float() / 127.5 - 1
    tgt = torch.tensor(np.stack([p[1] for p in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    opts = net.optimizers(2e-3, 0.0)
    seen = [net.train_step(net, {"source": src, "image": tgt}, opts, step, 0.0)[key] for step in range(20)]
    assert np.mean(seen[-5:]) < 0.6 * np.mean(seen[:5]), seen


def test_pix2pix_l1_falls():
    _losses_fall("pix2pix", "l1")


def test_cyclegan_cycle_loss_falls():
    _losses_fall("cyclegan", "cycle")


@pytest.mark.parametrize("family", ["pix2pix", "cyclegan"])
def test_resume_is_exact(pair_dirs, tmp_path, family):
    from gmkit.checkpoint import load_tensors
    from gmkit.loop import state_digest

    data = ["--data", f"{pair_dirs / 'lines'}:{pair_dirs / 'colour'}"] if family == "pix2pix" else \
        ["--data", str(pair_dirs / "lines"), "--data-b", str(pair_dirs / "colour")]
    _train(family, data, tmp_path / "full", 6)
    _train(family, data, tmp_path / "half", 3)
    r = run_cli("train", family, "--resume", str(tmp_path / "half"), "--steps", "6", "--quiet")
    assert r.code == 0, r.err

    def weights(run):
        t, _ = load_tensors(run / "train_state.safetensors")
        return state_digest({k: v for k, v in t.items() if k.startswith(("model.", "extra."))})

    assert weights(tmp_path / "full") == weights(tmp_path / "half")
    if family == "cyclegan":  # the image pools travel in the training state, not in the model file
        assert any(k.startswith("extra.pool_a") for k in load_tensors(tmp_path / "full" / "train_state.safetensors")[0])
        assert not any("pool" in k for k in load_tensors(tmp_path / "full" / "model.safetensors")[0])


# -- translation --------------------------------------------------------------------------------

def test_translates_any_size_the_generator_takes(p2p_run):
    from gmkit.errors import OptionError
    from gmkit.registry import load

    net, _ = load(str(p2p_run))
    for h, w in ((16, 16), (8, 24), (36, 20)):
        out = net.sample([torch.Generator()], image=torch.zeros(1, 1, h, w))
        assert out.shape == (1, 3, h, w)
    with pytest.raises(OptionError, match="multiples of 4"):
        net.sample([torch.Generator()], image=torch.zeros(1, 1, 10, 16))
    with pytest.raises(OptionError, match="has 3 channel"):  # a colour image to a grey-input model
        net.sample([torch.Generator()], image=torch.zeros(1, 3, 16, 16))


def test_sample_cli_translates_an_image_through_pipes(p2p_run, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_shape_pair(99, 32)[0]).resize((30, 22)).save(buf, format="PNG")
    r = run_cli("sample", str(p2p_run), "--image", "-", "--out", "-", stdin=buf.getvalue())
    assert r.code == 0, r.err
    im = Image.open(io.BytesIO(r.raw))
    assert im.size == (32, 24) and im.mode == "RGB"
    assert "resized to 32x24" in r.err
    r = run_cli("sample", str(p2p_run), "--image", "-", "--direction", "b2a", "--out", str(tmp_path / "x.png"),
                stdin=buf.getvalue())
    assert r.code == 2 and "do not take --direction" in r.err


def test_cyclegan_samples_both_directions(pair_dirs, tmp_path):
    out = tmp_path / "cg"
    _train("cyclegan", ["--data", str(pair_dirs / "lines"), "--data-b", str(pair_dirs / "colour")], out, 2)
    src = tmp_path / "in.png"
    Image.fromarray(_shape_pair(5)[1]).save(src)
    r = run_cli("sample", str(out), "--image", str(src), "--direction", "b2a", "--out", str(tmp_path / "a.png"))
    assert r.code == 0, r.err
    assert Image.open(tmp_path / "a.png").mode == "L"  # domain A is grey
    r = run_cli("sample", str(out), "--image", str(src), "--direction", "sideways", "--out", str(tmp_path / "b.png"))
    assert r.code == 2 and "a2b or b2a" in r.err
    # each direction takes its own domain's channels: other images are converted, and a lossy conversion is said
    r = run_cli("sample", str(out), "--image", str(src), "--direction", "a2b", "--out", str(tmp_path / "c.png"))
    assert r.code == 0 and "colour image converted to greyscale" in r.err, r.err
    assert Image.open(tmp_path / "c.png").mode == "RGB"  # domain B is colour
    grey = tmp_path / "grey.png"
    Image.fromarray(_shape_pair(5)[0]).save(grey)
    r = run_cli("sample", str(out), "--image", str(grey), "--direction", "b2a", "--out", str(tmp_path / "d.png"))
    assert r.code == 0 and "converted" not in r.err, r.err  # grey to a colour-input generator loses nothing


# -- the bundled default ------------------------------------------------------------------------

def test_bundled_pix2pix_colours_held_out_line_art():
    pytest.importorskip("resvg_py")
    import gmkit
    from gmkit.data.captioned import _openmoji_root
    from gmkit.data.paired import _render, line_art_svg, openmoji_pair_stems

    held_out = openmoji_pair_stems()[9::20]  # half of openmoji-lines:test (89 emoji), never trained on
    texts = [(_openmoji_root() / "svg" / f"{s}.svg").read_text() for s in held_out]
    line = torch.tensor(np.stack([_render(line_art_svg(t), 64) for t in texts])).float() / 127.5 - 1
    colour = torch.tensor(np.stack([_render(t, 64) for t in texts])).float() / 127.5 - 1
    model = gmkit.load("pix2pix", device="cpu")
    out = model.net.translate(line)

    def chroma(x):  # per pixel: how far from grey
        return x.max(1).values - x.min(1).values

    # Closer to the true colour emoji than the line drawing is, in pixels and in where the colour lies.
    assert (out - colour).abs().mean() < 0.9 * (line - colour).abs().mean()
    assert (chroma(out) - chroma(colour)).abs().mean() < 0.9 * (chroma(line) - chroma(colour)).abs().mean()
    wide = model.net.translate(torch.nn.functional.interpolate(line[:1], size=(64, 96)))  # another size it takes
    assert wide.shape == (1, 3, 64, 96)
