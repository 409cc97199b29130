"""WordNet tree induction, the ImageNet-1k tree, and WordNet data installation (offline)."""

import os
import textwrap

import pytest

from probes.errors import ProbesError
from probes.taxonomy import load_taxonomy, wordnet_data
from probes.taxonomy.wordnet import (
    imagenet_taxonomy,
    imagenet_wnids,
    resolve_synset,
    wnid_of,
    wordnet_taxonomy,
)
from probes.taxonomy.wordnet_data import (
    LEXNAMES,
    REQUIRED_FILES,
    install_from_debian,
    lexnames_text,
    open_reader,
)

HAVE_DEBIAN = wordnet_data.has_debian_wordnet()


@pytest.fixture(scope="module")
def wn():
    try:
        return wordnet_data.ensure_wordnet()
    except ProbesError as exc:
        pytest.skip(f"WordNet unavailable: {exc}")


@pytest.fixture(scope="module")
def imagenet(wn):
    return imagenet_taxonomy()


# -- the ImageNet-1k tree ----------------------------------------------------------------------
def test_imagenet_leaves_and_indices(imagenet):
    wnids = imagenet_wnids()
    assert wnids == sorted(wnids) and len(wnids) == 1000
    assert len(imagenet.leaves) == 1000 and imagenet.name == "imagenet-1k"
    by_index = {}
    for leaf in imagenet.leaves:
        attrs = imagenet.node_attrs(leaf)
        assert attrs["synset"] == leaf and leaf.count(".") >= 2  # ids are synset names
        assert attrs["wnid"] == wnids[attrs["index"]]
        by_index[attrs["index"]] = leaf
    assert sorted(by_index) == list(range(1000))
    assert by_index[0] == "tench.n.01"
    for node in imagenet.internal_nodes:
        attrs = imagenet.node_attrs(node)
        assert attrs["synset"] == node and attrs["wnid"].startswith("n") and attrs["label"]
        assert len(imagenet.children(node)) >= 2  # chains collapsed


def test_imagenet_dogs_and_cats(imagenet, wn):
    dog = wn.synset("dog.n.01")
    breeds = [leaf for leaf in imagenet.leaves
              if dog in wn.synset(leaf).closure(lambda s: s.hypernyms() + s.instance_hypernyms())]
    assert len(breeds) == 118
    assert set(imagenet.leaves_under("dog.n.01")) == set(breeds)
    # ImageNet's dog classes are the contiguous block 151..268
    assert sorted(imagenet.node_attrs(b)["index"] for b in breeds) == list(range(151, 269))
    for cat in ("tabby.n.01", wnid_name(wn, "n02123159")):  # tabby, tiger cat
        assert {"cat.n.01", "feline.n.01"} <= set(imagenet.ancestors(cat))
    assert imagenet.lca("beagle.n.01", "tabby.n.01") == "carnivore.n.01"


def wnid_name(wn, wnid):
    return wn.synset_from_pos_and_offset("n", int(wnid[1:])).name()


def test_imagenet_is_cached_but_independent(imagenet):
    again = imagenet_taxonomy()
    again.graph.nodes["dog.n.01"]["decision_sigma"] = 1.0
    assert "decision_sigma" not in imagenet.graph.nodes["dog.n.01"]
    assert again.leaves == imagenet.leaves


def test_load_taxonomy_wordnet_specs(imagenet):
    assert load_taxonomy("wordnet:imagenet-1k").leaves == imagenet.leaves
    t = load_taxonomy("wordnet:dog.n.01,cat.n.01,n02958343")
    assert t.leaves == ["dog.n.01", "cat.n.01", "car.n.01"]  # requested order where the tree allows
    assert t.node_attrs("car.n.01")["wnid"] == "n02958343"
    assert t.node_attrs("car.n.01")["label"] == "car"
    assert "auto" in t.node_attrs("car.n.01")["aliases"]
    assert t.lca("dog.n.01", "cat.n.01") == "carnivore.n.01"


def test_wordnet_yaml_forms(tmp_path, imagenet):
    path = tmp_path / "small.yaml"
    path.write_text(textwrap.dedent("""\
        name: small
        wordnet: [beagle.n.01, n02123045, sports_car.n.01, pizza.n.01]
        leaves:
          n02123045: {prompt: "a photo of a tabby cat"}
          pizza.n.01: {index: 7}
        nodes:
          carnivore.n.01: {prompt: "a photo of a carnivore"}
        """))
    t = load_taxonomy(path)
    assert t.name == "small"
    assert t.leaves == ["beagle.n.01", "tabby.n.01", "sports_car.n.01", "pizza.n.01"]
    assert t.node_attrs("tabby.n.01")["prompts"] == ["a photo of a tabby cat"]
    assert t.node_attrs("pizza.n.01")["index"] == 7
    assert t.node_attrs("carnivore.n.01")["prompts"] == ["a photo of a carnivore"]
    named = tmp_path / "inet.yaml"
    named.write_text("name: my-imagenet\nwordnet: imagenet-1k\n")
    assert load_taxonomy(named).leaves == imagenet.leaves
    assert load_taxonomy(named).name == "my-imagenet"
    mixed = load_taxonomy("imagenet-mixed-16")
    assert len(mixed.leaves) == 16 and mixed.node_attrs("pizza.n.01")["prompts"]


def test_hypernyms_come_in_wordnet_file_order(wn):
    """nltk returns hypernyms in a per-process order; the data file lists canine before domestic
    animal for dog.n.01, and military vehicle first of three for tank.n.01."""
    from probes.taxonomy.wordnet import _hypernyms

    assert [h.name() for h in _hypernyms(wn.synset("dog.n.01"))] == ["canine.n.02", "domestic_animal.n.01"]
    assert [h.name() for h in _hypernyms(wn.synset("tank.n.01"))] == [
        "military_vehicle.n.01", "armored_vehicle.n.01", "tracked_vehicle.n.01"]


def test_keep_chains_and_policies(wn):
    leaves = ["beagle.n.01", "tabby.n.01", "sports_car.n.01"]
    collapsed = wordnet_taxonomy(leaves)
    full = wordnet_taxonomy(leaves, keep_chains=True)
    assert full.root == "entity.n.01" and collapsed.root == "whole.n.02"
    assert full.max_depth > collapsed.max_depth
    assert any(len(full.children(n)) == 1 for n in full.internal_nodes)
    assert set(collapsed.internal_nodes) <= set(full.internal_nodes)
    assert "canine.n.02" in full.ancestors("beagle.n.01")  # deepest: taxonomic parent
    # tank.n.01 lists military_vehicle.n.01 first; armored and tracked vehicle are deeper (a tie
    # broken by WordNet's order).
    first = wordnet_taxonomy(leaves + ["tank.n.01"], keep_chains=True, policy="first")
    assert first.parent("tank.n.01") == "military_vehicle.n.01"
    deepest = wordnet_taxonomy(leaves + ["tank.n.01"], keep_chains=True)
    assert deepest.parent("tank.n.01") == "armored_vehicle.n.01"
    most = wordnet_taxonomy(leaves, keep_chains=True, policy="most-leaves")
    assert most.leaves == leaves
    with pytest.raises(ProbesError, match="unknown hypernym policy"):
        wordnet_taxonomy(leaves, policy="best")


@pytest.mark.parametrize("spec, expected", [
    ("wordnet:dgo.n.01,cat.n.01", "unknown synset 'dgo.n.01'"),
    ("wordnet:n99999999", "unknown wnid 'n99999999'"),
    ("wordnet:dog", "neither a synset name"),
    ("wordnet:run.v.01,cat.n.01", "not a noun synset"),
    ("wordnet:dog.n.01,beagle.n.01", "'dog.n.01' is a hypernym of 'beagle.n.01'"),
    ("wordnet:dog.n.01,n02084071", "are the same synset"),
    ("wordnet:", "no synsets given"),
])
def test_wordnet_errors(wn, spec, expected):
    with pytest.raises(ProbesError) as info:
        load_taxonomy(spec)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_wordnet_yaml_errors(tmp_path, wn):
    path = tmp_path / "bad.yaml"
    path.write_text("wordnet:\n  - dog.n.01\n  - cta.n.01\n")
    with pytest.raises(ProbesError, match=r"bad.yaml:3: wordnet: unknown synset 'cta.n.01'"):
        load_taxonomy(path)
    path.write_text("wordnet: [dog.n.01, cat.n.01]\nhypernym_policy: best\n")
    with pytest.raises(ProbesError, match=r"bad.yaml:2: unknown hypernym_policy"):
        load_taxonomy(path)
    path.write_text("wordnet: [dog.n.01, cat.n.01]\nroot: animals\n")
    with pytest.raises(ProbesError, match="the root is induced"):
        load_taxonomy(path)
    path.write_text("wordnet: [dog.n.01, cat.n.01]\nleaves:\n  wolf.n.01: {prompt: x}\n")
    with pytest.raises(ProbesError, match=r"bad.yaml:3: leaves: 'wolf.n.01' is not in the tree"):
        load_taxonomy(path)


def test_resolve_synset(wn):
    assert resolve_synset("n02084071").name() == "dog.n.01"
    assert wnid_of(resolve_synset("dog.n.01")) == "n02084071"


# -- WordNet data for nltk ----------------------------------------------------------------------
def test_lexnames_file():
    lines = lexnames_text().splitlines()
    assert len(lines) == 45 == len(LEXNAMES)
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[5] == "05\tnoun.animal\t1" and lines[29] == "29\tverb.body\t2"
    assert lines[2] == "02\tadv.all\t4" and lines[44] == "44\tadj.ppl\t3"


@pytest.mark.skipif(not HAVE_DEBIAN, reason="Debian's wordnet-base is not installed")
def test_install_from_debian_layout(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    target = install_from_debian(dest=tmp_path / "nltk_data")
    assert target == tmp_path / "nltk_data" / "corpora" / "wordnet"
    for name in REQUIRED_FILES + ("lexnames", "index.sense", "cntlist.rev"):
        path = target / name
        assert path.is_file() and not path.is_symlink(), name
    assert (target / "lexnames").read_text() == lexnames_text()
    assert os.path.getsize(target / "data.noun") == os.path.getsize("/usr/share/wordnet/data.noun")
    reader = open_reader(target)
    dog = reader.synset("dog.n.01")
    assert dog.lexname() == "noun.animal"
    assert reader.synset_from_pos_and_offset("n", 2084071) == dog
    assert reader.lemma_from_key("dog%1:05:00::").synset() == dog  # reads index.sense
    install_from_debian(dest=tmp_path / "nltk_data")  # a second run replaces the first cleanly
    assert sorted(p.name for p in target.parent.iterdir()) == ["wordnet"]


def test_install_from_debian_errors(tmp_path):
    with pytest.raises(ProbesError, match="no such directory"):
        install_from_debian(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "data.noun").write_text("")
    with pytest.raises(ProbesError, match="missing data.verb"):
        install_from_debian(tmp_path / "partial", tmp_path / "out")


def test_setup_falls_back_to_nltk_download(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(wordnet_data, "has_debian_wordnet", lambda *a: False)
    monkeypatch.setattr(nltk, "download", lambda *a, **k: False)
    with pytest.raises(ProbesError, match=r"nltk.download\('wordnet'\) failed"):
        wordnet_data.setup_wordnet(dest=tmp_path)
    calls = []
    monkeypatch.setattr(nltk, "download", lambda *a, **k: calls.append((a, k)) or True)
    assert "downloaded" in wordnet_data.setup_wordnet(dest=tmp_path)
    assert calls[0][0] == ("wordnet",) and calls[0][1]["download_dir"] == str(tmp_path)


def test_ensure_wordnet_reports_the_fix(monkeypatch):
    monkeypatch.setattr(wordnet_data, "_reader", None)
    monkeypatch.setattr(wordnet_data, "has_debian_wordnet", lambda *a: False)

    def missing():
        raise LookupError("Resource wordnet not found")

    monkeypatch.setattr(wordnet_data, "_nltk_wordnet", missing)
    with pytest.raises(ProbesError, match="probes wordnet setup"):
        wordnet_data.ensure_wordnet()


def test_ensure_wordnet_lays_out_debian_files_once(monkeypatch, tmp_path, capsys):
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setattr(wordnet_data, "_reader", None)
    monkeypatch.setattr(wordnet_data, "has_debian_wordnet", lambda *a: True)
    monkeypatch.setattr(wordnet_data, "default_dest", lambda: tmp_path)
    installs, attempts = [], []
    monkeypatch.setattr(wordnet_data, "install_from_debian", lambda src, dest: installs.append(dest))

    def load():
        attempts.append(1)
        if len(attempts) == 1:
            raise LookupError("Resource wordnet not found")
        return "reader"

    monkeypatch.setattr(wordnet_data, "_nltk_wordnet", load)
    assert wordnet_data.ensure_wordnet() == "reader"
    assert wordnet_data.ensure_wordnet() == "reader" and len(attempts) == 2  # cached
    assert installs == [tmp_path] and str(tmp_path) in nltk.data.path
    assert "laid out WordNet" in capsys.readouterr().err
