"""Feature extractors against reference implementations, offline, with random weights written by the tests.

Inception: torch-fidelity's network and FID/KID formulas (installed with `pip install --no-deps
torch-fidelity`: its package pulls torchvision, so only the modules holding the network and the
formulas are imported, under a stand-in package). DINOv2 and CLIP: transformers' own outputs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import types

import pytest
import torch

from conftest import data_images, run_cli
from gmkit.errors import GmkitError
from gmkit.metrics import inception


def torch_fidelity(module: str):
    """``torch_fidelity.<module>`` without running the package's __init__ (which imports torchvision)."""
    if "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None:
            pytest.fail("the reference implementation is missing: pip install --no-deps torch-fidelity==0.4.0")
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["torch_fidelity"] = pkg
        # metric_fid / metric_kid import these high-level helpers (and torchvision through them); unused here.
        utils = types.ModuleType("torch_fidelity.utils")
        for name in ("get_cacheable_input_name", "cache_lookup_one_recompute_on_miss", "create_feature_extractor",
                     "extract_featuresdict_from_input_id_cached", "resolve_feature_extractor",
                     "resolve_feature_layer_for_metric"):
            setattr(utils, name, None)
        sys.modules["torch_fidelity.utils"] = utils
    return importlib.import_module(f"torch_fidelity.{module}")


def uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A random FID Inception state dict in the published file's format, scaled so activations neither
    vanish nor explode through the 94 layers; returns (path, sha256, size)."""
    net = inception.FIDInception()
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size


@pytest.fixture
def as_published(random_inception, monkeypatch, tmp_path):
    """Make the random file pass for the published one, in an empty cache."""
    path, sha, size = random_inception
    monkeypatch.setattr(inception, "PUBLISHED_SHA256", sha)
    monkeypatch.setattr(inception, "PUBLISHED_BYTES", size)
    monkeypatch.setenv("GMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GMKIT_INCEPTION_WEIGHTS", raising=False)
    return path


def test_inception_features_equal_torch_fidelity_at_299(as_published, rgb_folders):
    from gmkit.imageio import load_image_set

    x = load_image_set(str(rgb_folders[1]))[0][:2]
    net = inception.load_inception(as_published)
    with torch.inference_mode():
        mine = net(inception.preprocess(x))
    ref_net = torch_fidelity("feature_extractor_inceptionv3").FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(as_published))
    with torch.inference_mode():
        (theirs,) = ref_net(uint8(x))
    assert theirs.abs().mean() > 1e-3  # not a degenerate network
    assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def test_fid_and_kid_equal_torch_fidelity(as_published, rgb_folders, monkeypatch):
    """End to end through ``evaluate`` (at a 75 px network input on both sides, to keep the test fast)."""
    from gmkit.data import load_data
    from gmkit.metrics.evaluate import evaluate

    tf_net_mod = torch_fidelity("feature_extractor_inceptionv3")
    monkeypatch.setattr(inception, "INPUT_SIZE", 75)
    monkeypatch.setattr(tf_net_mod.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    ref_folder, samples = rgb_folders
    held = data_images(load_data(str(ref_folder), "test"))
    # noise against shapes, as many as the reference: KID then uses every image of both
    x = torch.rand(len(held), 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = evaluate(x, str(ref_folder), "inception", extractor_weights=str(as_published))
    assert r["extractor"] == "inception" and r["names"] == {"fd": "FID", "kid": "KID"}

    net = tf_net_mod.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                 feature_extractor_weights_path=str(as_published))
    with torch.inference_mode():
        (fa,), (fb,) = net(uint8(x)), net(uint8(held))
    fid_mod, kid_mod = torch_fidelity("metric_fid"), torch_fidelity("metric_kid")
    fid = fid_mod.fid_statistics_to_metric(fid_mod.fid_features_to_statistics(fa),
                                           fid_mod.fid_features_to_statistics(fb), False)["frechet_inception_distance"]
    # float64 features: torch-fidelity sums its kernel in the features' dtype, and KID is a small difference
    # of large sums (float32 alone moves it by ~1e-4 relative); gmkit accumulates in float64
    kid = kid_mod.kid_features_to_metric(fa.double(), fb.double(), kid_subsets=5, kid_subset_size=len(held), verbose=False,
                                         kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                         kid_kernel_poly_coef0=1, rng_seed=0)["kernel_inception_distance_mean"]
    assert fid > 0.01 and abs(kid) > 1e-4
    assert r["metrics"]["fd"] == pytest.approx(fid, rel=1e-4)
    assert r["metrics"]["kid"] == pytest.approx(kid, rel=1e-4)


def test_inception_weights_checked_converted_cached_and_refused(as_published, random_inception, tmp_path, monkeypatch):
    net = inception.load_inception(as_published)  # converts once into the cache
    cached = tmp_path / "cache" / "metrics" / "inception-2015-12-05.safetensors"
    assert cached.is_file()
    again = inception.load_inception()  # no path: the cached copy
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    # a changed cache copy is not trusted; with no other copy, one line says how to provide the weights
    cached.write_bytes(cached.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(GmkitError, match="--extractor-weights"):
        inception.load_inception()
    # ... and the torch hub cache (where pytorch-fid and torch-fidelity keep the file) is found
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(as_published, hub / inception.PUBLISHED_NAME)
    assert isinstance(inception.load_inception(), inception.FIDInception)
    # any other file is refused: FID means the published weights
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(3)}, other)
    with pytest.raises(GmkitError, match="not the published FID Inception weights"):
        inception.load_inception(other)
    # a pickle that would run code is never unpickled, even with the right checksum
    evil = tmp_path / "evil.pth"
    torch.save({"x": os.system}, evil)  # a reference to a callable: what code-running pickles are made of
    monkeypatch.setattr(inception, "PUBLISHED_SHA256", hashlib.sha256(evil.read_bytes()).hexdigest())
    monkeypatch.setattr(inception, "PUBLISHED_BYTES", evil.stat().st_size)
    with pytest.raises(GmkitError, match="cannot read it as a tensor file"):
        inception.load_inception(evil)


def test_inception_refusals_are_one_line(rgb_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ref, samples = rgb_folders
    r = run_cli("metrics", str(samples), "--reference", str(ref))  # default for a folder: inception
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "pt_inception-2015-12-05-6726825d.pth" in r.err and "--extractor-weights" in r.err
    r = run_cli("metrics", str(samples), "--reference", str(ref), "--extractor", "inception",
                "--extractor-weights", str(tmp_path / "nope.pth"))
    assert r.code == 2 and "no such file" in r.err and len(r.err.strip().splitlines()) == 1


def test_inception_weights_downloaded_once_checked_and_offline_refused(as_published, tmp_path, monkeypatch, capsys):
    import io
    import urllib.request

    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append((url, timeout))
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / inception.PUBLISHED_NAME
    # offline (the test default): no request, one line saying how to provide the file
    payload = as_published.read_bytes()
    with pytest.raises(GmkitError, match="HF_HUB_OFFLINE is set.*--extractor-weights"):
        inception.load_inception()
    assert not urls and not hub.exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # a file that is not the published one is refused and not left where the next run would find it
    payload = b"not the weights"
    with pytest.raises(GmkitError, match="does not have the published sha256"):
        inception.load_inception()
    assert not list(hub.parent.iterdir())
    # the published file: fetched once into the torch hub cache, converted, then found without a request
    payload = as_published.read_bytes()
    net = inception.load_inception()
    assert urls[-1] == (inception.PUBLISHED_URL, 20) and hub.read_bytes() == payload
    assert "downloading the FID Inception weights once" in capsys.readouterr().err
    again = inception.load_inception()
    assert len(urls) == 2 and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_unreachable_inception_download_is_one_line(rgb_folders, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def unreachable(url, timeout=None):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    ref, samples = rgb_folders
    r = run_cli("metrics", str(samples), "--reference", str(ref), "--extractor", "inception")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "Name or service not known" in r.err and "--extractor-weights" in r.err and "Traceback" not in r.err


def _pil(x: torch.Tensor):
    from PIL import Image

    return [Image.fromarray(a) for a in uint8(x).permute(0, 2, 3, 1).numpy()]


def test_dinov2_features_and_fd_equal_transformers(tiny_dinov2, rgb_folders):
    from transformers import AutoImageProcessor, AutoModel

    from gmkit.data import load_data
    from gmkit.imageio import load_image_set
    from gmkit.metrics.evaluate import evaluate
    from gmkit.metrics.extractors import get_extractor

    ref_folder, samples = rgb_folders
    x = load_image_set(str(samples))[0]
    held = data_images(load_data(str(ref_folder), "test"))
    model, proc = AutoModel.from_pretrained(tiny_dinov2), AutoImageProcessor.from_pretrained(tiny_dinov2)
    with torch.inference_mode():
        theirs = [model(**proc(images=_pil(t), return_tensors="pt")).pooler_output for t in (x, held)]
    mine = get_extractor(str(tiny_dinov2)).features(x)
    assert torch.allclose(mine, theirs[0], rtol=1e-4, atol=1e-6)
    r = evaluate(x, str(ref_folder), str(tiny_dinov2))
    fid_mod = torch_fidelity("metric_fid")
    fd = fid_mod.fid_statistics_to_metric(*(fid_mod.fid_features_to_statistics(t.double()) for t in theirs),
                                          False)["frechet_inception_distance"]
    assert r["metrics"]["fd"] == pytest.approx(fd, rel=1e-4)
    assert r["names"]["fd"] == f"FD-{tiny_dinov2.name}" and r["extractor"] == tiny_dinov2.name


def test_clip_features_and_score_equal_transformers(tiny_clip, rgb_folders):
    from transformers import AutoModel, AutoProcessor

    from gmkit.imageio import load_image_set
    from gmkit.metrics.evaluate import evaluate
    from gmkit.metrics.extractors import get_extractor

    ref_folder, samples = rgb_folders
    x = load_image_set(str(samples))[0]
    prompts = [f"a {c} shape number {i}" for i, c in enumerate(["red", "blue", "green"] * 4)]
    model, proc = AutoModel.from_pretrained(tiny_clip), AutoProcessor.from_pretrained(tiny_clip)
    with torch.inference_mode():
        out = model(**proc(text=prompts, images=_pil(x), return_tensors="pt", padding=True))
        feats = model.get_image_features(pixel_values=proc(images=_pil(x), return_tensors="pt")["pixel_values"])
    feats = getattr(feats, "pooler_output", feats)
    assert torch.allclose(get_extractor(str(tiny_clip)).features(x), feats, rtol=1e-4, atol=1e-6)
    cos = (out.image_embeds * out.text_embeds).sum(-1).double()
    expected = float((100 * cos.clamp_min(0)).mean())
    assert expected > 0  # some pairs agree, so the test is not comparing zeros
    r = evaluate(x, str(ref_folder), str(tiny_clip), prompts=prompts)
    assert r["clip_score"]["clip_score"] == pytest.approx(expected, rel=1e-4)


def test_hub_aliases_resolve_from_the_cache_offline(tiny_dinov2, tmp_path, monkeypatch):
    from gmkit.metrics.extractors import get_extractor

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "a" * 40
    repo = tmp_path / "hf" / "hub" / "models--facebook--dinov2-large"
    shutil.copytree(tiny_dinov2, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    ext = get_extractor("dinov2")
    assert ext.name == "dinov2" and ext.fd_name == "FD-dinov2" and ext.spec == "dinov2"
    with pytest.raises(GmkitError, match="not in the local Hugging Face cache"):
        get_extractor("clip")
