"""ImageNet classifiers over WordNet leaves, with the real EfficientNet-Lite0 weights and real photos."""

import time

import networkx as nx
import pytest
import torch
from tolerances import F32, magnitude

from probes.classifiers.imagenet import ImageNetClassifier, imagenet_groups, imagenet_wnids
from probes.errors import ProbesError
from probes.taxonomy import Taxonomy, load_taxonomy

skdata = pytest.importorskip("skimage.data")


def photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo as a [1, 3, H, W] tensor in [-1, 1]."""
    return torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float()[None] / 127.5 - 1


@pytest.fixture(scope="module")
def imagenet_tax():
    return load_taxonomy("wordnet:imagenet-1k")


@pytest.fixture(scope="module")
def coarse_tax():
    return load_taxonomy("wordnet:feline.n.01,dog.n.01,vehicle.n.01,food.n.01,container.n.01,weapon.n.01")


def _direct_tax():
    """Leaves that are ImageNet classes themselves (by wnid or by output index): no WordNet needed."""
    g = nx.DiGraph()
    g.add_node("tabby", wnid="n02123045")
    g.add_node("espresso", wnid="n07920052")
    g.add_node("missile", index=657)
    g.add_edges_from([("root", "tabby"), ("root", "things"), ("things", "espresso"), ("things", "missile")])
    return Taxonomy(g, name="direct")


def test_wnids_are_the_standard_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[281] == "n02123045" and wnids[657] == "n03773504"


def test_efficientnet_lite0_labels_sample_photos(imagenet_tax):
    clf = ImageNetClassifier.create(imagenet_tax, source="efficientnet_lite0")
    wnid = [imagenet_tax.node_attrs(leaf)["wnid"] for leaf in clf.leaves]
    assert sorted(wnid) == imagenet_wnids()  # one leaf per class, each holding exactly its class
    assert clf.group_index[:, 0].tolist() == [imagenet_wnids().index(w) for w in wnid]
    assert clf.group_valid.sum().item() == 1000
    with torch.no_grad():
        lp = torch.cat([clf(photo(n)) for n in ("chelsea", "coffee", "rocket")])
    top = [wnid[i] for i in lp.argmax(-1).tolist()]
    assert top[0] in {"n02123045", "n02123159", "n02124075"}  # tabby, tiger cat, Egyptian cat
    assert top[1] in {"n07920052", "n07930864", "n03063599"}  # espresso, cup, coffee mug
    # The launch-pad photo is close between "missile" and "drilling platform"; together the two
    # missile classes outweigh any single class.
    rocket = lp[2].exp()
    top3 = [wnid[i] for i in rocket.topk(3).indices.tolist()]
    assert "n03773504" in top3  # missile
    missiles = sum(rocket[wnid.index(w)] for w in ("n03773504", "n04008634"))
    assert missiles > rocket.max() and top[2] in {"n03773504", "n04008634", "n03240683"}
    cat = lp[0].exp()
    mass = {node: cat[[clf.leaves.index(leaf) for leaf in imagenet_tax.leaves_under(node)]].sum().item()
            for node in ("feline.n.01", "animal.n.01")}
    assert mass["feline.n.01"] > 0.8 and mass["animal.n.01"] > 0.9


def test_internal_wordnet_leaves_gather_their_descendants(coarse_tax):
    groups = imagenet_groups(coarse_tax)
    sizes = {leaf: len(g) for leaf, g in groups.items()}
    assert sizes["dog.n.01"] == 118 and sizes["feline.n.01"] == 13
    assert 281 in groups["feline.n.01"] and 207 in groups["dog.n.01"]  # tabby, golden retriever
    flat = [i for g in groups.values() for i in g]
    assert len(flat) == len(set(flat))  # every class goes to one leaf at most

    clf = ImageNetClassifier.create(coarse_tax, source="efficientnet_lite0", temperature=1.0)
    x = torch.nn.functional.interpolate(torch.cat([photo("chelsea")[..., :, :450], photo("coffee")[..., :300, :450]]),
                                        size=(240, 360), mode="area")
    with torch.no_grad():
        logits = clf.logits(x)
        lp = clf(x)
    # leaf mass = the ImageNet softmax summed over the leaf's classes; the other classes are outside
    p = logits.softmax(-1)
    manual = torch.stack([p[:, groups[leaf]].sum(-1) for leaf in clf.leaves], -1)
    # float32 log-sum-exp over each leaf's classes against a float32 sum of softmax entries: relative
    # 1e-4 (840 float32 units), absolute 1e-6 for masses near 0 (8 units of a probability's scale 1)
    torch.testing.assert_close(lp.exp(), manual, rtol=1e-4, atol=1e-6)
    probs = dict(zip(clf.leaves, lp.exp().T))
    assert probs["feline.n.01"][0] > 0.9 and probs["food.n.01"][1] > 0.9
    clf.temperature = 3.0
    with torch.no_grad():
        flatter = clf(x)
    assert flatter.exp().max() < lp.exp().max()


def test_leaf_without_imagenet_classes_is_an_error():
    g = nx.DiGraph()
    g.add_edges_from([("root", "feline.n.01"), ("root", "emotion.n.01")])
    with pytest.raises(ProbesError, match="does not cover 1 taxonomy leaves: emotion.n.01"):
        ImageNetClassifier.create(Taxonomy(g, name="t"), source="efficientnet_lite0")


class _NoWordNet:
    def __getattr__(self, name):
        raise AssertionError("WordNet should not be needed")


def test_direct_leaves_need_no_wordnet():
    tax = _direct_tax()
    groups = imagenet_groups(tax, wordnet=_NoWordNet())
    assert groups == {"tabby": [281], "espresso": [967], "missile": [657]}
    clf = ImageNetClassifier.create(tax, source="efficientnet_lite0", wordnet=_NoWordNet())
    with torch.no_grad():
        lp = torch.cat([clf(photo("chelsea")), clf(photo("coffee"))])
    assert lp.argmax(-1).tolist() == [0, 1]


def test_timm_and_torchvision_sources(tmp_path, monkeypatch):
    import torchvision

    tax = _direct_tax()
    timm_clf = ImageNetClassifier.create(tax, "resnet18", source="timm", pretrained=False)
    import timm

    crop = timm.create_model("resnet18").pretrained_cfg["crop_pct"]
    assert timm_clf.image_size == 224 and timm_clf.resize_size == int(224 / crop)
    tv = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    tv_clf = ImageNetClassifier.create(tax, "resnet18", source="torchvision", pretrained=str(path))
    assert (tv_clf.image_size, tv_clf.resize_size, tv_clf.interpolation) == (224, 256, "bilinear")
    x = torch.rand(2, 3, 300, 260) * 2 - 1
    with torch.no_grad():
        ref = tv.eval()(tv_clf.preprocess(x))  # the same float32 weights and input: 32 units of the logits' magnitude
        torch.testing.assert_close(tv_clf.logits(x), ref, rtol=0, atol=32 * F32 * magnitude(ref))
        assert timm_clf(x).shape == (2, 3)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(ProbesError, match="offline"):
        ImageNetClassifier.create(tax, "resnet18", source="torchvision", pretrained=True)
    with pytest.raises(ProbesError, match="no such checkpoint"):
        ImageNetClassifier.create(tax, "resnet18", source="timm", pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ProbesError, match="not a timm model"):
        ImageNetClassifier.create(tax, "no_such_net", source="timm", pretrained=False)
    with pytest.raises(ProbesError, match="source"):
        ImageNetClassifier.create(tax, "resnet18", source="keras")
    assert time.monotonic() - start < 10
