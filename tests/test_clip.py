"""CLIP zero-shot over taxonomy leaves, on a tiny random open_clip architecture."""

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from tolerances import F32, magnitude

from probes.classifiers import clip as clip_mod
from probes.classifiers.clip import (
    ClipZeroShotClassifier,
    leaf_texts,
    node_names,
    register_tiny_clip,
    resolve_templates,
)
from probes.errors import ProbesError
from probes.taxonomy import Taxonomy


@pytest.fixture(scope="module")
def tiny():
    return register_tiny_clip()


@pytest.fixture(scope="module")
def tax():
    g = nx.DiGraph()
    g.add_node("car", prompts=["a red car", "a blue car"])
    g.add_node("kitty", label="cat", aliases=["kitten"])
    g.add_edges_from([("root", "animal"), ("animal", "kitty"), ("animal", "golden_retriever"), ("root", "car")])
    return Taxonomy(g, name="toy")


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    """A local checkpoint file for the tiny architecture (what a user's downloaded weights are)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(tiny)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_leaf_texts_and_templates(tax):
    texts = leaf_texts(tax, ["a photo of a {}.", "art of the {}."])
    # generation prompts are not classifier texts: the leaf's names go through the templates
    assert texts["car"] == ["a photo of a car.", "art of the car."]
    assert texts["kitty"] == ["a photo of a cat.", "art of the cat.", "a photo of a kitten.", "art of the kitten."]
    assert texts["golden_retriever"] == ["a photo of a golden retriever.", "art of the golden retriever."]
    assert len(resolve_templates("imagenet")) == 80 and len(resolve_templates("simple")) == 7
    assert resolve_templates("photo") == ["a photo of a {}."]
    assert resolve_templates(None) == resolve_templates("imagenet")
    with pytest.raises(ProbesError, match="has no"):
        resolve_templates(["a photo of a cat"])
    with pytest.raises(ProbesError):
        resolve_templates("fancy")


def test_imagenet_leaves_use_curated_names():
    assert node_names("tabby.n.01", {"label": "tabby.n.01", "wnid": "n02123045"})[0] == "tabby cat"
    assert node_names("x", {"label": "x", "synset": "nonexistent.n.99"}) == ["nonexistent"]


def test_scores_shapes_normalisation_and_temperature(tiny, tax):
    clf = ClipZeroShotClassifier.create(tax, tiny, templates="photo", cache_dir=None)
    assert clf.leaves == tax.leaves
    # Float32 throughout: 32 float32 units of the magnitude compared (norms, probabilities: 1; logits
    # and log-probabilities: their own), for reductions summed in another order (measured <= 4 units).
    torch.testing.assert_close(clf.text_features.norm(dim=-1), torch.ones(3), rtol=0, atol=32 * F32)
    x = torch.rand(4, 3, 50, 70) * 2 - 1
    with torch.no_grad():
        logits = clf.logits(x)
        lp = clf(x)
        img = clf.image_features(x)
    assert logits.shape == lp.shape == (4, 3)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(4), rtol=0, atol=32 * F32)
    scale = clf.model.logit_scale.exp()
    ref = scale * img @ clf.text_features.t()
    torch.testing.assert_close(logits, ref, rtol=0, atol=32 * F32 * magnitude(ref))
    clf.temperature = 0.25
    with torch.no_grad():
        ref = torch.log_softmax(logits / 0.25, -1)
        torch.testing.assert_close(clf(x), ref, rtol=0, atol=32 * F32 * magnitude(ref))
    sharp = ClipZeroShotClassifier.create(tax, tiny, templates="photo", temperature=0.5, cache_dir=None)
    assert sharp.temperature == 0.5


def test_text_embeddings_are_per_leaf_means(tiny, tax):
    clf = ClipZeroShotClassifier.create(tax, tiny, templates=["a photo of a {}.", "a {}."], cache_dir=None)
    texts = clf.texts["kitty"]
    assert len(texts) == 4
    with torch.no_grad():
        emb = F.normalize(clf.model.encode_text(clf.tokenizer(texts)), dim=-1).mean(0)
    # unit vectors in float32: 32 units
    torch.testing.assert_close(clf.text_features[clf.leaves.index("kitty")], F.normalize(emb, dim=0),
                               rtol=0, atol=32 * F32)


def test_preprocessing_resizes_crops_and_normalises(tiny, tax):
    clf = ClipZeroShotClassifier.create(tax, tiny, templates="photo", cache_dir=None)
    grey = torch.zeros(2, 3, 48, 96)  # 0 in [-1, 1] is mid grey
    out = clf.preprocess(grey)
    assert out.shape == (2, 3, 32, 32)
    expected = (0.5 - clf.mean) / clf.std
    # float32 resampling of a constant image (weights summing to 1) then normalisation: 64 units of the
    # values' magnitude (measured 4)
    torch.testing.assert_close(out, expected.expand_as(out), rtol=0, atol=64 * F32 * magnitude(expected))
    # centre crop keeps the middle of a wide image
    wide = -torch.ones(1, 3, 32, 96)
    wide[..., 32:64] = 1
    expected = (1 - clf.mean) / clf.std
    torch.testing.assert_close(clf.preprocess(wide), expected.expand(1, 3, 32, 32), rtol=0,
                               atol=64 * F32 * magnitude(expected))


def test_text_encoder_runs_once(tiny, tax, checkpoint, tmp_path, monkeypatch):
    path, reference = checkpoint
    monkeypatch.setattr(clip_mod, "_TEXT_CACHE", {})
    first = ClipZeroShotClassifier.create(tax, tiny, pretrained=str(path), templates="simple", cache_dir=tmp_path)
    assert first.text_encoder_calls == 1  # all 21 texts (3 leaves' names x 7 templates) in one batch
    calls = []
    original = first.model.encode_text
    first.model.encode_text = lambda *a, **k: calls.append(1) or original(*a, **k)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        first(x), first(x)
    assert calls == []
    # the loaded weights are the checkpoint's
    with torch.no_grad():
        pixels = first.preprocess(x)
        ref = reference.encode_image(pixels)  # the same float32 weights: 32 units of the features' magnitude
        torch.testing.assert_close(first.model.encode_image(pixels), ref, rtol=0, atol=32 * F32 * magnitude(ref))
    # same model and texts: memory cache, then disk cache
    again = ClipZeroShotClassifier.create(tax, tiny, pretrained=str(path), templates="simple", cache_dir=tmp_path)
    assert again.text_encoder_calls == 0
    monkeypatch.setattr(clip_mod, "_TEXT_CACHE", {})
    from_disk = ClipZeroShotClassifier.create(tax, tiny, pretrained=str(path), templates="simple", cache_dir=tmp_path)
    assert from_disk.text_encoder_calls == 0 and len(list(tmp_path.glob("clip-text-*.pt"))) == 1
    torch.testing.assert_close(from_disk.text_features, first.text_features, rtol=0, atol=32 * F32)  # unit vectors
    # different texts: computed anew
    other = ClipZeroShotClassifier.create(tax, tiny, pretrained=str(path), templates="photo", cache_dir=tmp_path)
    assert other.text_encoder_calls == 1


def test_missing_weights_and_unknown_models(tiny, tax, tmp_path):
    with pytest.raises(ProbesError) as err:
        ClipZeroShotClassifier.create(tax, tiny, pretrained=str(tmp_path / "missing.pt"))
    assert "missing.pt" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ProbesError, match="not an open_clip architecture"):
        ClipZeroShotClassifier.create(tax, "ViT-Q-99")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ProbesError, match="cannot load"):
        ClipZeroShotClassifier.create(tax, tiny, pretrained=str(bad))


def test_a_universe_puts_mass_outside_the_taxonomy(tiny, tax):
    """Names outside the taxonomy are native classes owned by no leaf: leaf probabilities are the
    softmax over all classes at the leaves' own columns (exact), so rows sum to p(T | x) < 1."""
    outside = ["bicycle", "tree", "cat"]  # "cat" is the kitty leaf's label: it stays the leaf's
    clf = ClipZeroShotClassifier.create(tax, tiny, templates="photo", cache_dir=None, universe=outside)
    assert clf.native == [f"leaf:{leaf}" for leaf in tax.leaves] + ["outside:bicycle", "outside:tree"]
    assert clf.leaves == tax.leaves
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        lp, logits = clf(x), clf.logits(x)
    assert logits.shape == (4, 5)
    ref = torch.log_softmax(logits, -1)[:, :3]  # float32: 32 units of the log-probabilities' magnitude
    torch.testing.assert_close(lp, ref, rtol=0, atol=32 * F32 * magnitude(ref))
    assert (lp.exp().sum(-1) < 1).all()
    with pytest.raises(ProbesError, match="classifier.universe"):
        ClipZeroShotClassifier.create(tax, tiny, templates="photo", cache_dir=None, universe="everything")


def test_imagenet_universe_gives_leaves_their_imagenet_classes(tiny):
    """universe: imagenet scores the 1000 ImageNet classes; a leaf that is an ImageNet class owns
    it, a leaf with no ImageNet class keeps its own text, and the other classes are outside."""
    g = nx.DiGraph()
    g.add_node("tabby", wnid="n02123045")
    g.add_node("robot", label="robot")
    g.add_edges_from([("root", "tabby"), ("root", "robot")])
    t = Taxonomy(g, name="toy")
    clf = ClipZeroShotClassifier.create(t, tiny, templates="photo", cache_dir=None, universe="imagenet")
    assert len(clf.native) == 1001 and clf.native[-1] == "leaf:robot"
    assert clf.texts["imagenet:n02123045"] == ["a photo of a tabby cat."]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        lp, logits = clf(x), clf.logits(x)
    p = torch.softmax(logits, -1)
    tabby = clf.native.index("imagenet:n02123045")
    # float32 probabilities: 32 units
    torch.testing.assert_close(lp.exp(), torch.stack([p[:, tabby], p[:, -1]], -1), rtol=0, atol=32 * F32)
