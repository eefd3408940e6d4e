"""Issue 26's CLI items, each through the real CLI: class names for ``folder:`` sources (``--classes FILE`` in embed
and finetune, WordNet-id folders named in English), repeated name options that accumulate, the nearest name for a
mistyped command, metric, source kind or model, "no store at X" saying what X is and which command reads it, a bare
folder suggested as ``folder:``, missing S3 credentials as one line, and unreadable images counted with ``--strict``
named."""
import json
import os
import shlex

import numpy as np
import pytest
from PIL import Image

import embedx
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke, run_bounded
from tests.test_measures import brute_force


def _folders(root, names, per=2, seed=0):
    rng = np.random.default_rng(seed)
    for n in names:
        os.makedirs(root / n)
        for k in range(per):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / n / f"{k}.png")
    return root


def _embed(data, out, *extra):
    return invoke("embed", "-m", "embedx-tiny", "--data", data, "--out", out, "-b", "8", "--workers", "0", *extra)


def _error(r):
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


# -- 3. class names for folders ------------------------------------------------------------------------------------

def _imagenet_reference(wnids):
    """open_clip's class name of each ImageNet-1k id, by its index in timm's ImageNetInfo (the label order);
    timm's first WordNet lemma (ImageNet-22k info) for any other id."""
    import embedx.models.encoder  # noqa: F401  (the torchvision shim, before timm)
    import timm.data
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    order = timm.data.ImageNetInfo().label_names()
    info22 = timm.data.ImageNetInfo("imagenet-22k")
    return [IMAGENET_CLASSNAMES[order.index(w)] if w in order else
            info22.label_name_to_description(w).split(",")[0].strip() for w in wnids]


def test_imagenet_style_folders_prompt_english_names(tmp_path):
    """Before: "a photo of a n01440764." The 1k ids get open_clip's names, a 21k id timm's lemma."""
    wnids = ["n00005787", "n01440764", "n01443537", "n02012849"]  # benthos (21k only), tench, goldfish, crane
    root = _folders(tmp_path / "inet", wnids)
    r = _embed(str(root), tmp_path / "s.zarr")
    assert r.exit_code == 0, r.stderr
    s = Store(str(tmp_path / "s.zarr"))
    want = _imagenet_reference(wnids)
    assert list(s.text_names()) == want and want[1] == "tench" and want[0] == "benthos"
    assert s.meta["prompts"]["templates"] == ["a photo of a {}."] and s.meta["prompts"]["classnames"] == want
    assert "WordNet-id subfolders are named" in r.stderr and "--classes FILE" in r.stderr


def test_classes_file_names_folder_classes_in_embed(tmp_path):
    root = _folders(tmp_path / "imgs", ["c0", "c1", "c2"])
    lines = tmp_path / "names.txt"
    lines.write_text("red fox\ngrey wolf\nbrown bear\n")
    mapping = tmp_path / "LOC_synset_mapping.txt"  # more folders than there are, in another order
    mapping.write_text("c9 not here\nc2 brown bear, Ursus arctos\nc0 red fox\nc1 grey wolf\n")
    keras = tmp_path / "index.json"
    keras.write_text(json.dumps({"0": ["c0", "fox"], "1": ["c1", "wolf"], "2": ["c2", "bear"]}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"c1": "wolf", "c0": "fox", "c2": "bear"}))
    for f, want in ((lines, ["red fox", "grey wolf", "brown bear"]),
                    (mapping, ["red fox", "grey wolf", "brown bear, Ursus arctos"]),
                    (keras, ["fox", "wolf", "bear"]), (plain, ["fox", "wolf", "bear"])):
        out = tmp_path / f"{f.stem}.zarr"
        r = _embed(f"folder:{root}", out, "--classes", f)
        assert r.exit_code == 0, r.stderr
        s = Store(str(out))
        assert list(s.text_names()) == want
        np.testing.assert_array_equal(s.labels(), [0, 0, 1, 1, 2, 2])
    bad = tmp_path / "two.txt"
    bad.write_text("a\nb\n")
    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    for args, words in (((bad,), ("--classes", "2 names for the 3 subfolders")),
                        ((dup,), ("--classes", "'c0' and 'c2' are both named 'a'")),
                        ((tmp_path / "none.txt",), ("classes file not found",))):
        r = _embed(f"folder:{root}", tmp_path / "x.zarr", "--classes", *args)
        assert_one_line_error(r.exit_code, r.stderr, *words)
        assert r.exit_code == 2 and not (tmp_path / "x.zarr").exists()


def test_classes_file_names_folder_classes_in_finetune(tmp_path):
    root = _folders(tmp_path / "imgs", ["a", "b"], per=4)
    names = tmp_path / "names.txt"
    names.write_text("apple\nbanana\n")
    r = invoke("finetune", "-m", "embedx-tiny", "--method", "bitfit", "--epochs", "1", "-b", "4", "--workers", "0",
               "--data", f"folder:{root}", "--classes", names, "--out", tmp_path / "run", "--json")
    assert r.exit_code == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["classnames"] == ["apple", "banana"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["classnames"] == ["apple", "banana"]


# -- 5. repeated names accumulate ----------------------------------------------------------------------------------

def test_repeated_metrics_and_scores_accumulate(tmp_path, rng):
    """Before: `--metrics acs --metrics gap` kept only gap."""
    x = rng.standard_normal((60, 8)).astype(np.float32)
    t = rng.standard_normal((3, 8)).astype(np.float32)
    y = np.arange(60) % 3
    path = str(tmp_path / "s.zarr")
    embedx.import_arrays(path, images=x, texts=t, labels=y, dtype="float32")
    r = invoke("measure", path, "--metrics", "acs", "--metrics", "gap,iimm", "--metrics", "acs", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["options"]["metrics"] == ["acs", "gap", "iimm"]
    ref = brute_force(x, t, y, False)
    for k in ("acs", "gap", "iimm"):
        assert d[k] == pytest.approx(ref[k], abs=1e-5)
    r = invoke("transfer", path, "--scores", "logme", "--scores", "hscore", "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert {"logme", "hscore"} <= set(got) and not {"leep", "nce", "gbc"} & set(got)


def test_repeated_predict_measures_accumulate(tmp_path, rng):
    from tests.test_predict import random_history

    random_history(tmp_path / "h.csv", rng, 12)
    r = invoke("predict", "--history", tmp_path / "h.csv", "--measures", "a", "--measures", "c", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["options"]["measures"] == ["a", "c"] and set(doc["fits"]) == {"a", "c"}
    once = json.loads(invoke("predict", "--history", tmp_path / "h.csv", "--measures", "a,c", "--json").stdout)
    assert once["fits"] == doc["fits"]


# -- 5. nearest names ----------------------------------------------------------------------------------------------

def test_nearest_names_for_commands_metrics_sources_and_models(tmp_path, rng):
    x = rng.standard_normal((20, 8)).astype(np.float32)
    path = str(tmp_path / "s.zarr")
    embedx.import_arrays(path, images=x, texts=x[:2], labels=np.arange(20) % 2)
    for args, words in ((["mesure", path], ("no such command 'mesure'", "did you mean measure?")),
                        (["measure", path, "--metrics", "iim"], ("unknown metric 'iim'", "did you mean iimm?")),
                        (["transfer", path, "--scores", "logm"], ("did you mean logme?",)),
                        (["embed", "-m", "embedx-tiny", "--data", "digts", "--out", tmp_path / "a.zarr"],
                         ("unknown data source 'digts'", "did you mean digits?")),
                        (["embed", "-m", "embedx-tiny", "--data", f"foldr:{tmp_path}", "--out", tmp_path / "a.zarr"],
                         (f"did you mean folder:{tmp_path}?",)),
                        (["finetune", "-m", "vit-b-32", "--method", "lora", "--dry-run"],
                         ("unknown open_clip model 'vit-b-32'", "did you mean ViT-B-32")),
                        (["embed", "-m", "embedx-tinyy", "--data", "digits", "--out", tmp_path / "a.zarr"],
                         ("did you mean embedx-tiny",))):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.stderr)
        assert_one_line_error(r.exit_code, r.stderr, *words)
    r = invoke("zzzz")
    assert_one_line_error(r.exit_code, r.stderr, "no such command 'zzzz'")
    assert "did you mean" not in r.stderr


def test_a_bare_folder_of_images_is_suggested_as_folder(tmp_path):
    """Before: "unknown data source 'imgs'" for an existing folder."""
    flat = tmp_path / "imgs"
    flat.mkdir()
    for k in range(3):
        Image.new("RGB", (8, 8), (k, 0, 0)).save(flat / f"{k}.png")
    r = _embed(str(flat), tmp_path / "a.zarr")
    assert_one_line_error(r.exit_code, r.stderr, f"did you mean folder:{flat}?", "3 images directly in it",
                          "one subfolder per class")


# -- 5. "no store at X" says what X is and which command reads it --------------------------------------------------

def _suggested(r):
    """The command the error line ends with, as arguments (after ``embedx``)."""
    line = _error(r)[0]
    return shlex.split(line[line.rindex("embedx "):])[1:]


def test_no_store_at_names_what_is_there_and_the_command_that_reads_it(tmp_path, rng):
    x = rng.standard_normal((30, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "pairs.npy", np.stack([x, x + 0.1]))
    np.savez(tmp_path / "f.npz", img=x, txt=x[:3])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": [str(i) for i in range(30)], "emb": list(x)}), tmp_path / "e.parquet")
    src = str(tmp_path / "src.zarr")
    embedx.import_arrays(src, images=x, texts=x + 0.1, paired=True)
    assert invoke("export", src, "--format", "clip-retrieval", "--out", tmp_path / "dump").exit_code == 0
    classes = _folders(tmp_path / "pets", ["cat", "dog"])
    cases = {"x.npy": ("a .npy array of shape (30, 8)", "embedx import --images"),
             "pairs.npy": ("paired rows (2, 30, 8)", "embedx import --paired-array"),
             "f.npz": ("a .npz archive (arrays: img, txt)", "f.npz:img"),
             "e.parquet": ("a Parquet file (columns: emb, key)", "e.parquet:emb"),
             "dump": ("a clip-retrieval dump folder", "embedx import --from clip-retrieval"),
             "pets": ("class subfolders of images", "embedx embed --model MODEL --data folder:")}
    for name, words in cases.items():
        path = str(tmp_path / name)
        r = invoke("measure", path)
        assert_one_line_error(r.exit_code, r.stderr, f"no store at {path}: it looks like", *words)
    r = invoke("info", tmp_path / "nothing.zarr")
    assert _error(r) == [f"error: no store at {tmp_path / 'nothing.zarr'}"]
    # the complete suggestions work as printed
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for name, store in (("pairs.npy", "pairs.zarr"), ("dump", "dump.zarr")):
            args = _suggested(invoke("measure", name))
            assert invoke(*args).exit_code == 0
            assert Store(store).n_images == 30 and Store(store).paired
    finally:
        os.chdir(cwd)
    with pytest.raises(embedx.errors.StoreError, match="clip-retrieval dump folder, which an import reads"):
        embedx.measure(str(tmp_path / "dump"))


# -- 5. missing credentials ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from tests.s3server import s3_server

    with s3_server(str(tmp_path_factory.mktemp("aws"))) as server:
        yield server


def test_missing_credentials_are_one_line_and_exit_2_on_every_path(s3, tmp_path, rng):
    """import --from (a dump folder and its format found), parquet: and wds: data, an embed, export and import
    writing to s3://, a store read: each one line naming the endpoint, exit 2. Arrays at a URL are refused as
    such (they are read locally), never "file not found"."""
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3.bucket}/nc/dump/img_emb/img_emb_0.npy", b"x")
    fs.pipe(f"{s3.bucket}/nc/d.parquet", b"x")
    fs.pipe(f"{s3.bucket}/nc/0.tar", b"x")
    x = rng.standard_normal((20, 8)).astype(np.float32)
    for name, a in (("x", x), ("t", x[:2]), ("y", np.arange(20) % 2)):
        np.save(tmp_path / f"{name}.npy", a)
    local = str(tmp_path / "l.zarr")
    embedx.import_arrays(local, images=x, texts=x[:2], labels=np.arange(20) % 2)
    imp = ["import", "--images", tmp_path / "x.npy", "--texts", tmp_path / "t.npy", "--labels", tmp_path / "y.npy"]
    none = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    for args in (["import", s3.url("nc/dump"), "--out", tmp_path / "a.zarr"],
                 ["embed", "-m", "embedx-tiny", "--data", f"parquet:{s3.url('nc/d.parquet')}", "--out",
                  tmp_path / "b.zarr"],
                 ["finetune", "-m", "embedx-tiny", "--method", "bitfit", "--data", f"wds:{s3.url('nc/0.tar')}",
                  "--out", tmp_path / "run"],
                 [*imp, "--out", s3.url("nc/new.zarr")],
                 ["export", local, "--format", "npy", "--out", s3.url("nc/exp")],
                 ["measure", s3.url("nc/s.zarr")]):
        rc, _, err = run_bounded(*args, env=none, timeout=120)
        assert rc == 2, (args, err)
        assert_one_line_error(rc, err, "no credentials", s3.endpoint, "AWS_ACCESS_KEY_ID")
    r = invoke("import", "--images", s3.url("nc/x.npy"), "--texts", tmp_path / "t.npy", "--out", tmp_path / "c.zarr")
    assert_one_line_error(r.exit_code, r.stderr, s3.url("nc/x.npy"), "is a URL", "local files")


# -- 5. unreadable images: counted, the first named, --strict named ------------------------------------------------

def test_a_csv_with_half_its_images_missing_says_so(tmp_path):
    """Before: exit 0 with one count line."""
    rows = ["image,label"]
    for i in range(10):
        if i % 2 == 0:
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "s.zarr"
    r = _embed(f"csv:{tmp_path / 'd.csv'}", out)
    assert r.exit_code == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    before = next(ln for ln in warn if "image paths" in ln)
    assert "5 of its 10 image paths (50%) are not files: 1.png, 3.png, 5.png and 2 more" in before
    assert "relative to the CSV's folder" in before and "strict=True" not in r.stderr
    after = next(ln for ln in warn if "could not be read" in ln)
    assert "5 of 10 images (50%) could not be read and were skipped: 1.png (" in after and "and 2 more" in after
    assert "--strict" in after
    assert "5 of 10 unreadable skipped" in r.stdout and "--strict" in r.stdout
    s = Store(str(out))
    assert s.n_images == 5 and sorted(i["id"] for i in s.meta["skipped"]) == ["1.png", "3.png", "5.png", "7.png",
                                                                            "9.png"]
    r = _embed(f"csv:{tmp_path / 'd.csv'}", tmp_path / "strict.zarr", "--strict")
    assert_one_line_error(r.exit_code, r.stderr, "cannot read image '1.png'", "drop --strict")
