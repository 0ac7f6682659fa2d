"""k-means, nearest-code search and ``gmkit quantize`` as a user runs it."""

import json

import pytest
import torch
from safetensors.torch import load, load_file, save, save_file

from conftest import run_cli
from gmkit.nn.quantizer import kmeans, kmeans_pp_init, nearest
from gmkit.codebooks import assign, fit, from_vectors, lookup, to_vectors


def blobs(k=6, per=150, dim=8, spread=0.05, seed=0, scale=10.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * scale
    x = centres.repeat_interleave(per, 0) + spread * torch.randn(k * per, dim, generator=g)
    return x, centres, torch.arange(k).repeat_interleave(per)


def test_kmeans_recovers_well_separated_clusters():
    x, centres, truth = blobs()
    c, idx = kmeans(x, 6, iters=20, generator=torch.Generator().manual_seed(1))
    # every true centre has a fitted centre next to it, and every cluster is pure
    d = torch.cdist(centres, c)
    assert d.min(1).values.max() < 0.1
    for k in range(6):
        assert idx[truth == k].unique().numel() == 1
    assert idx.unique().numel() == 6


def test_kmeans_is_deterministic_with_a_seed():
    x, _, _ = blobs(k=20, per=30, spread=3.0)
    a, _ = kmeans(x, 16, generator=torch.Generator().manual_seed(3))
    b, _ = kmeans(x, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_greedy_seeding_puts_a_seed_in_more_clusters_than_plain_kmeans_pp():
    # 40 clusters in 16-d whose spread is not negligible: with one candidate per step, k-means++
    # often draws a point of an already seeded cluster (their noise outweighs the unseeded ones);
    # greedy trials (keep the candidate that lowers the potential most) rarely do.
    def clusters_hit(trials, seed):
        x, centres, _ = blobs(k=40, per=25, dim=16, spread=0.2, seed=seed, scale=1.0)
        seeds = kmeans_pp_init(x, 40, torch.Generator().manual_seed(seed), trials=trials)
        return torch.cdist(seeds, centres).argmin(1).unique().numel()

    plain = [clusters_hit(1, s) for s in range(6)]
    greedy = [clusters_hit(None, s) for s in range(6)]
    assert sum(greedy) / 6 >= 38.5 and sum(plain) / 6 <= 37, (plain, greedy)


def test_kmeans_reaches_the_noise_floor_on_separated_clusters():
    # The same clusters: one k-means++ candidate per step ends 1.7-2.8x above the floor, since
    # Lloyd's iterations cannot move a spare centre to an unseeded cluster far away.
    for seed in range(3):
        x, centres, truth = blobs(k=40, per=25, dim=16, spread=0.2, seed=seed, scale=1.0)
        c, idx = kmeans(x, 40, generator=torch.Generator().manual_seed(seed))
        floor = float((x - centres[truth]).pow(2).mean())
        assert float((x - c[idx]).pow(2).mean()) < 1.25 * floor


def test_seeding_is_deterministic_and_handles_duplicate_points():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)
    a = kmeans_pp_init(x, 5, torch.Generator().manual_seed(0))
    b = kmeans_pp_init(x, 5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (5, 2)
    assert {tuple(r.tolist()) for r in a} == {(0.0, 0.0), (1.0, 1.0)}  # both distinct points, then repeats


def test_nearest_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    x, cb = torch.randn(5000, 16, generator=g), torch.randn(100, 16, generator=g)
    idx, dist = nearest(x, cb, chunk=777)  # chunk boundaries must not matter
    brute = torch.cdist(x.double(), cb.double()).argmin(1)
    assert (idx == brute).float().mean() > 0.999  # float32 ties aside
    assert torch.allclose(dist, (x - cb[idx]).pow(2).sum(1), atol=1e-3)


def test_residual_levels_lower_the_error():
    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(0))
    errs = []
    for levels in (1, 2, 3):
        books = fit(x, 16, levels=levels, seed=0)
        idx, recon = assign(x, books)
        assert torch.allclose(lookup(idx, books), recon, atol=1e-5)
        errs.append(float((x - recon).pow(2).mean()))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("shape,patch", [((4, 3, 8, 8), None), ((4, 3, 8, 8), 4), ((10, 5), None)])
def test_vector_layouts_round_trip(shape, patch):
    t = torch.randn(shape)
    v, layout = to_vectors(t, patch, "t")
    assert v.shape[1] == (shape[1] * patch * patch if patch else shape[1])
    assert torch.equal(from_vectors(v, layout), t)


# -- the command --------------------------------------------------------------------------------

def test_cli_fit_then_apply_matches_brute_force(tmp_path):
    x, _, _ = blobs(k=8, per=100, dim=4, spread=1.0)
    src = tmp_path / "z.safetensors"
    save_file({"mean": x}, str(src), metadata={"gmkit.kind": "latents", "gmkit.family": "vae"})
    cb = tmp_path / "cb.safetensors"
    r = run_cli("quantize", str(src), "--codebook", "8", "--seed", "0", "--out", str(cb), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["vectors"] == 800 and report["dim"] == 4 and report["usage"] == 1.0
    assert report["bits_per_vector"] == 3.0 and report["psnr_db"] is None
    book = load_file(str(cb))["codebook"]
    assert book.shape == (1, 8, 4)

    fresh = torch.randn(300, 4) * 5
    src2 = tmp_path / "z2.safetensors"
    save_file({"mean": fresh}, str(src2))
    idx_file = tmp_path / "idx.safetensors"
    r = run_cli("quantize", str(src2), "--apply", str(cb), "--out", str(idx_file), "-q")
    assert r.code == 0, r.err
    got = load_file(str(idx_file))["indices"].long()[:, 0]
    assert torch.equal(got, torch.cdist(fresh.double(), book[0].double()).argmin(1))


def test_cli_pipes_stdin_to_stdout_and_is_deterministic(tmp_path):
    x = torch.randn(2, 6, 5, 5)  # a spatial latent: 50 vectors of dim 6
    data = save({"z": x}, metadata={"gmkit.kind": "latents"})
    a = run_cli("quantize", "-", "--codebook", "4", "--seed", "7", stdin=data)
    b = run_cli("quantize", "-", "--codebook", "4", "--seed", "7", stdin=data)
    assert a.code == 0, a.err
    assert "usage" in a.err and "bits/vector" in a.err
    ta, tb = load(a.raw), load(b.raw)
    assert torch.equal(ta["codebook"], tb["codebook"])
    assert ta["indices"].shape == (2, 5, 5, 1)


def test_patches_report_psnr(tmp_path):
    imgs = torch.rand(6, 1, 8, 8) * 2 - 1
    src = tmp_path / "im.safetensors"
    save_file({"images": imgs}, str(src))
    r = run_cli("quantize", str(src), "--patch", "4", "--codebook", "8", "--levels", "2",
                "--out", str(tmp_path / "q.safetensors"), "--json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["dim"] == 16 and rep["vectors"] == 24 and rep["psnr_db"] > 0 and rep["bits_per_vector"] == 6.0


def _one_line_error(r):
    assert r.code != 0
    lines = [ln for ln in r.err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("gmkit: error:"), r.err
    assert "Traceback" not in r.err


@pytest.mark.parametrize("tensor,args,words", [
    (torch.full((10, 4), float("nan")), ["--codebook", "2"], "NaN"),
    (torch.zeros(0, 4), ["--codebook", "2"], "empty"),
    (torch.zeros(10, 4, dtype=torch.long), ["--codebook", "2"], "floating-point"),
    (torch.randn(3, 4), ["--codebook", "8"], "at least 8 vectors"),
    (torch.randn(3, 4, 5), ["--codebook", "2"], "expected (N, D)"),
    (torch.randn(3, 4, 6, 6), ["--codebook", "2", "--patch", "4"], "must divide"),
])
def test_bad_input_is_one_line_and_overwrites_nothing(tmp_path, tensor, args, words):
    src = tmp_path / "bad.safetensors"
    save_file({"mean": tensor}, str(src))
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    r = run_cli("quantize", str(src), *args, "--out", str(out))
    _one_line_error(r)
    assert words in r.err
    assert out.read_bytes() == b"keep me"


def test_codebook_of_another_dimension_is_refused(tmp_path):
    save_file({"codebook": torch.randn(1, 4, 3)}, str(tmp_path / "cb.safetensors"))
    save_file({"mean": torch.randn(20, 5)}, str(tmp_path / "z.safetensors"))
    r = run_cli("quantize", str(tmp_path / "z.safetensors"), "--apply", str(tmp_path / "cb.safetensors"),
                "--out", str(tmp_path / "o.safetensors"))
    _one_line_error(r)
    assert "dimension 3" in r.err and "dimension 5" in r.err
    assert not (tmp_path / "o.safetensors").exists()


def test_needs_exactly_one_mode_and_valid_stdin(tmp_path):
    _one_line_error(run_cli("quantize", "x.safetensors"))
    _one_line_error(run_cli("quantize", "-", "--codebook", "2", stdin=b"not safetensors"))
    _one_line_error(run_cli("quantize", "-", "--codebook", "2", stdin=b""))
