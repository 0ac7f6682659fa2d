"""--revision and --token wherever a model source is resolved: bench, compare, train's --autoencoder,
metrics' --extractor and the Python API, from a fake Hugging Face cache (offline, HF_HUB_OFFLINE=1).

The repos here keep their weights at ``refs/pr/N`` only (where the Hub's conversion bot leaves
safetensors): the main branch is not cached, so a command that ignored the revision fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from gmkit.errors import GmkitError, OptionError

REPO, AE_REPO, DINO_REPO = "someone/tiny-ddpm", "someone/tiny-ae", "someone/tiny-dino"
SECRET = "hf_secret_never_written"
TINY_LDM = ["--set", "unet.block_out_channels=[32,32]", "--set", "autoencoder.vae.block_out_channels=[8,16,16]",
            "--set", "num_train_timesteps=100", "--set", "train.preview=0", "--set", "train.log_every=1"]


def cache_repo(cache: Path, repo: str, folder: Path, ref: str) -> None:
    """``folder`` as the snapshot of ``repo`` at ``ref``, laid out as huggingface_hub's cache
    (``refs/refs/pr/1`` names the commit of ``refs/pr/1``)."""
    commit = f"{abs(hash((repo, ref))) % 16 ** 10:010x}" * 4
    base = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (base / "refs" / ref).write_text(commit)


def one_file(tmp_path: Path, src: Path, name: str = "model.safetensors") -> Path:
    folder = tmp_path / f"repo-{src.parent.name}-{src.name}"
    folder.mkdir()
    shutil.copy(src, folder / name)
    return folder


@pytest.fixture
def hub(tiny_run, tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache_repo(cache, REPO, one_file(tmp_path, tiny_run / "model.safetensors"), "refs/pr/1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


# -- which sources a revision names ---------------------------------------------------------------

def test_with_revision_pins_the_one_hub_repo(tiny_run):
    from gmkit.registry import with_revision

    assert with_revision(["vae", "org/a", str(tiny_run)], "refs/pr/3") == ["vae", "org/a@refs/pr/3", str(tiny_run)]
    assert with_revision(["org/a@v1", "org/a@v1"], "v1") == ["org/a@v1", "org/a@v1"]
    assert with_revision(["org/a", "org/b"], None) == ["org/a", "org/b"]
    with pytest.raises(OptionError, match="exactly one Hub repo and models lists 2 .*org/name@REVISION"):
        with_revision(["org/a", "org/b"], "v1")
    with pytest.raises(OptionError, match="lists none"):
        with_revision(["vae", str(tiny_run)], "v1")
    with pytest.raises(GmkitError, match="names revision 'v1' but --revision says 'v2'"):
        with_revision(["org/a@v1"], "v2")


@pytest.mark.parametrize("command", ["bench", "compare"])
def test_one_revision_for_several_hub_repos_is_refused_in_one_line(command):
    r = run_cli(command, "--models", "org/a,org/b,vae", "--revision", "v1")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "--revision applies to exactly one Hub repo and --models lists 2" in r.err and "org/name@REVISION" in r.err
    r = run_cli(command, "--models", "vae,ddpm", "--revision", "v1")
    assert r.code == 2 and "lists none" in r.err


# -- bench and compare ----------------------------------------------------------------------------

def test_bench_reads_a_hub_repo_at_a_pr_revision(hub):
    args = ["--steps", "2", "--batch-size", "2", "--runs", "1", "--json"]
    r = run_cli("bench", "--models", f"{REPO},vae", "--revision", "refs/pr/1", "--token", SECRET, *args)
    assert r.code == 0, r.err
    rows = json.loads(r.out)["results"]
    assert [(row["model"], row["family"]) for row in rows] == [(f"{REPO}@refs/pr/1", "ddpm"), ("vae", "vae")]
    assert SECRET not in r.out + r.err
    r = run_cli("bench", "--models", f"{REPO}@refs/pr/1", *args)  # the inline form
    assert r.code == 0, r.err
    r = run_cli("bench", "--models", REPO, *args)  # main is not cached: the revision was what found it
    assert r.code == 2 and "not in the local Hugging Face cache" in r.err


def test_compare_reads_a_hub_repo_at_a_pr_revision_and_keeps_the_token_out(hub, tmp_path):
    from gmkit.compare import Settings, compare

    s = Settings(data="digits", extractor="mnist", samples=8, slow_samples=8, batch_size=8, sweep_steps=[],
                 likelihood_images=4)
    report, _ = compare([REPO], s, revision="refs/pr/1", token=SECRET)
    (col,) = report["models"]
    assert col["source"] == f"{REPO}@refs/pr/1" and col["family"] == "ddpm" and col["cells"]["quality"]["n"] == 8
    assert SECRET not in json.dumps(report, default=str)
    r = run_cli("compare", "--models", REPO, "--data", "digits", "--extractor", "mnist", "--samples", "4",
                "--slow-samples", "4", "--sweep-steps", "", "--likelihood-images", "4", "--json")
    assert r.code == 0 and "not in the local Hugging Face cache" in r.err  # a column of n/a, as any bad model


# -- train --autoencoder ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> Path:
    """Eight 16 px captioned images: the smallest data an ldm trains on."""
    from PIL import Image

    root = tmp_path_factory.mktemp("captioned")
    lines = []
    for i in range(8):
        Image.new("RGB", (16, 16), ((30 * i) % 256, 100, 200)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a square of colour {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_autoencoder(captioned, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ae"
    r = run_cli("train", "autoencoder", "--data", str(captioned), "--steps", "2", "--batch-size", "4", "--out", str(out),
                "--quiet", "--set", "vae.block_out_channels=[8,16,16]", "--set", "train.preview=0")
    assert r.code == 0, r.err
    return out


def test_train_ldm_with_a_hub_autoencoder_at_a_revision(captioned, tiny_autoencoder, tmp_path, monkeypatch):
    from gmkit.checkpoint import read_metadata

    cache = tmp_path / "hub"
    cache_repo(cache, AE_REPO, one_file(tmp_path, tiny_autoencoder / "model.safetensors"), "refs/pr/2")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    out = tmp_path / "ldm"
    r = run_cli("train", "ldm", "--data", str(captioned), "--autoencoder", AE_REPO, "--revision", "refs/pr/2",
                "--token", SECRET, "--steps", "1", "--batch-size", "4", "--out", str(out), "--quiet", *TINY_LDM)
    assert r.code == 0, r.err
    assert not (out / "autoencoder").exists()  # read from the Hub cache, not trained
    recipe = json.loads(read_metadata(out / "model.safetensors")["gmkit.recipe"])
    assert recipe["autoencoder"] == f"{AE_REPO}@refs/pr/2" and "--token '***'" in recipe["command"]
    for f in out.rglob("*"):
        assert not f.is_file() or SECRET.encode() not in f.read_bytes(), f
    r = run_cli("train", "ldm", "--data", str(captioned), "--autoencoder", AE_REPO, "--steps", "1",
                "--out", str(tmp_path / "main"))
    assert r.code == 2 and "not in the local Hugging Face cache" in r.err


def test_train_revision_and_token_need_a_hub_autoencoder(tmp_path):
    import gmkit

    r = run_cli("train", "ddpm", "--revision", "refs/pr/1", "--steps", "1", "--out", str(tmp_path / "a"))
    assert r.code == 2 and "--revision applies to a Hub model source given as --autoencoder" in r.err
    with pytest.raises(OptionError, match="token applies to a Hub model source given as autoencoder"):
        gmkit.train("ldm", "mnist-captions", tmp_path / "b", steps=1, token=SECRET)
    r = run_cli("train", "ldm", "--autoencoder", "vae", "--revision", "v1", "--data", "mnist-captions",
                "--steps", "1", "--out", str(tmp_path / "c"))
    assert r.code == 2 and "applies to Hub repos; vae is a bundled model" in r.err


def test_recorded_command_lines_hide_the_token():
    from gmkit.training import command_line

    assert command_line(["train", "ldm", "--token", "hf_x", "--autoencoder", "a/b", "--token=hf_y"]) == \
        "gmkit train ldm --token '***' --autoencoder a/b '--token=***'"


# -- metrics --extractor ----------------------------------------------------------------------------

def test_hub_extractor_at_a_revision_resolves_as_models_do(tiny_dinov2, rgb_folders, tmp_path, monkeypatch):
    from gmkit.metrics.extractors import get_extractor

    cache = tmp_path / "hub"
    cache_repo(cache, DINO_REPO, tiny_dinov2, "refs/pr/2")
    cache_repo(cache, "facebook/dinov2-large", tiny_dinov2, "refs/pr/2")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ext = get_extractor(DINO_REPO, revision="refs/pr/2", token=SECRET)
    assert ext.spec == ext.name == f"{DINO_REPO}@refs/pr/2"  # statistics files rebuild the same revision
    assert get_extractor(f"{DINO_REPO}@refs/pr/2").identity == ext.identity
    assert get_extractor("dinov2", revision="refs/pr/2").spec == "facebook/dinov2-large@refs/pr/2"
    with pytest.raises(GmkitError, match=f"extractor {DINO_REPO}: not in the local Hugging Face cache"):
        get_extractor(DINO_REPO)
    with pytest.raises(OptionError, match="applies to Hub extractors"):
        get_extractor("inception", revision="v1")
    ref, samples = rgb_folders
    r = run_cli("metrics", str(samples), "--reference", str(ref), "--extractor", DINO_REPO, "--revision", "refs/pr/2",
                "--token", SECRET, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["extractor"] == f"{DINO_REPO}@refs/pr/2" and SECRET not in r.out + r.err
    r = run_cli("metrics", str(samples), "--reference", str(ref), "--extractor", str(tiny_dinov2), "--revision", "v1")
    assert r.code == 2 and "--revision applies to Hub extractors" in r.err


def test_unreachable_hub_extractor_falls_back_to_the_cache_at_once(tiny_dinov2, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    from gmkit.metrics.extractors import get_extractor

    cache = tmp_path / "hub"
    cache_repo(cache, DINO_REPO, tiny_dinov2, "refs/pr/2")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    assert get_extractor(f"{DINO_REPO}@refs/pr/2").name == f"{DINO_REPO}@refs/pr/2"
    assert capsys.readouterr().err.count("Hub is unreachable") == 1
    with pytest.raises(GmkitError, match="extractor tiny-org/never-cached: cannot reach the Hugging Face Hub"):
        get_extractor("tiny-org/never-cached")
