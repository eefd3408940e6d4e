"""Data sources, encoders and the embed workflow on real open_clip models (random-init, tiny configs)."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from embedx.embedding.options import EncodeOptions, SourceOptions, WriteOptions
from embedx.embedding.serial import embed_to_store, resolve_templates
from embedx.models.encoder import load_encoder
from embedx.errors import EmbedxError
from embedx.sources.catalog import digits_source, parse_source
from embedx.store import Store
from tests.conftest import assert_one_line_error, invoke, run_embedx


def _image_folder(root, rng, per_class=(3, 4), bad=True):
    for c, n in zip(("cat", "dog"), per_class):
        os.makedirs(root / c)
        for k in range(n):
            arr = rng.integers(0, 255, (20 + k, 17, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{k}.png")
    if bad:
        (root / "dog" / "broken.png").write_bytes(b"this is not a png")
    return root


def test_folder_source_is_sorted_and_labelled(tmp_path, rng):
    src = parse_source(f"folder:{_image_folder(tmp_path / 'imgs', rng)}")
    assert src.classnames == ["cat", "dog"]
    assert src.ids[:3] == ["cat/0.png", "cat/1.png", "cat/2.png"] and src.ids[3] == "dog/0.png"
    assert list(src.labels) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert src.load(0).size == (17, 20)


def test_digits_source_is_sklearns_digits():
    from sklearn.datasets import load_digits

    src = digits_source()
    d = load_digits()
    assert len(src) == 1797 and src.classnames == [str(k) for k in range(10)]
    np.testing.assert_array_equal(src.labels, d.target)
    im = np.asarray(src.load(7).convert("L"))
    small = im[::8, ::8].astype(float)  # nearest upscale by 8: every 8th pixel is the original
    np.testing.assert_allclose(255 - small, np.clip(d.images[7] * 255 / 16, 0, 255).astype(np.uint8), atol=1)
    train, test = parse_source("digits:train"), parse_source("digits:test")
    assert (len(train), len(test)) == (1437, 360) and not set(train.ids) & set(test.ids)
    assert train.ids + test.ids == src.ids
    np.testing.assert_array_equal(np.r_[train.labels, test.labels], d.target)
    np.testing.assert_array_equal(np.asarray(test.load(5)), np.asarray(src.load(1437 + 5)))
    with pytest.raises(Exception, match="digits split"):
        parse_source("digits:val")


def test_digits_tasks_subset_rotate_and_noise():
    from sklearn.datasets import load_digits

    d = load_digits()
    sub = parse_source("digits:test:classes=3,8")
    rows = 1437 + np.flatnonzero(np.isin(d.target[1437:], [3, 8]))
    assert sub.ids == [f"digits:{i}" for i in rows] and sub.classnames == ["3", "8"]
    np.testing.assert_array_equal(sub.labels, (d.target[rows] == 8).astype(np.int32))  # 3 -> 0, 8 -> 1
    plain = parse_source("digits:test")
    np.testing.assert_array_equal(np.asarray(sub.load(0)), np.asarray(plain.load(rows[0] - 1437)))
    assert parse_source("digits:classes=0-2,7").classnames == ["0", "1", "2", "7"]

    turned = parse_source("digits:test:classes=3,8:rotate=180")
    a, b = np.asarray(sub.load(4).convert("L")), np.asarray(turned.load(4).convert("L"))
    np.testing.assert_array_equal(b, a[::-1, ::-1])  # 180 degrees is an exact flip of both axes
    n1, n2 = (np.asarray(parse_source("digits:test:classes=3,8:noise=0.2").load(4).convert("L"), float)
              for _ in range(2))
    np.testing.assert_array_equal(n1, n2)  # seeded by the image: the same noise every time
    assert 20 < np.abs(n1 - a).mean() < 60  # std 51 before clipping

    for bad, msg in [("digits:val", "digits split"), ("digits:train:classes=3", "at least 2"),
                     ("digits:classes=1-12", "0-9"), ("digits:train:blur=2", "unknown digits option"),
                     ("digits:rotate=x", "numbers")]:
        with pytest.raises(EmbedxError, match=msg):
            parse_source(bad)


def test_csv_sources_resolve_relative_paths(tmp_path, rng):
    _image_folder(tmp_path / "imgs", rng, bad=False)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows([["imgs/cat/0.png", "cat"], ["imgs/dog/1.png", "dog"], [str(tmp_path / "imgs/cat/1.png"), "cat"]])
    src = parse_source(f"csv:{tmp_path / 'labels.csv'}")
    assert src.classnames == ["cat", "dog"] and list(src.labels) == [0, 1, 0]
    assert src.load(1).size == (17, 21)
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([["imgs/cat/0.png", "a cat, sitting"], ["imgs/dog/0.png", "a dog"]])
    src = parse_source(f"csv:{tmp_path / 'caps.csv'}")
    assert src.paired and src.captions == ["a cat, sitting", "a dog"]


def test_synthetic_source_is_seeded_and_sized():
    a, b = parse_source("synthetic:12:size=40:classes=5:seed=3"), parse_source("synthetic:12:size=40:classes=5:seed=3")
    assert len(a) == 12 and a.classnames == [f"class {k}" for k in range(5)] and not a.paired
    assert a.labels.tolist() == [i % 5 for i in range(12)]
    im = a.load(7)
    assert im.size == (40, 40) and im.mode == "RGB"
    assert np.array_equal(np.asarray(im), np.asarray(b.load(7)))
    assert not np.array_equal(np.asarray(im), np.asarray(a.load(8)))
    assert not np.array_equal(np.asarray(im), np.asarray(parse_source("synthetic:12:size=40:seed=4").load(7)))
    assert len(parse_source("synthetic")) == 10000


def test_device_normalization_gives_the_same_pixels_and_store(tmp_path, rng):
    """uint8 from the loaders, x/255 and (x - mean)/std on the device: bit for bit the full transform."""
    from embedx.models.encoder import normalize_pixels, split_preprocess

    for model in ("embedx-tiny", "ViT-B-32"):
        enc = load_encoder(model, "none", device="cpu")
        pre, norm = split_preprocess(enc.preprocess)
        assert norm is not None
        for shape in ((37, 50, 3), (300, 224, 3), (224, 224, 3)):
            im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
            u8 = pre(im)
            assert u8.dtype == torch.uint8
            assert torch.equal(normalize_pixels(u8[None], *norm)[0], enc.preprocess(im))
    identity = (lambda im: im)
    assert split_preprocess(identity) == (identity, None)  # an unknown transform is left as it is
    outs = []
    for on_device in (False, True):
        out = str(tmp_path / f"{on_device}.zarr")
        embed_to_store(out, "digits", "embedx-tiny", seed=1, source=SourceOptions(limit=50), progress=False,
                       encode=EncodeOptions(batch_size=16, workers=0, normalize_on_device=on_device))
        outs.append(Store(out).images())
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("spec,msg", [("folder:/does/not/exist", "folder not found"), ("csv:/nope.csv", "not found"),
                                      ("imagenet", "unknown data source"), ("folder:", "unknown data source"),
                                      ("synthetic:many", "take integers"),
                                      ("synthetic:10:colour=red", "unknown synthetic"),
                                      ("synthetic:0", "must be positive")])
def test_bad_source_specs(spec, msg):
    with pytest.raises(EmbedxError, match=msg):
        parse_source(spec)


def test_empty_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedxError, match="no class subfolders"):
        parse_source(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(EmbedxError, match="no images"):
        parse_source(f"folder:{tmp_path / 'empty'}")


def test_templates():
    src = digits_source()
    assert resolve_templates(None, src) == ['a photo of the number: "{}".']
    simple = resolve_templates(["simple"], src)
    assert len(simple) > 1 and all("{}" in t for t in simple)
    assert len(resolve_templates(["openai"], src)) == 80
    with pytest.raises(EmbedxError, match="placeholder"):
        resolve_templates(["a photo"], src)


def test_random_weights_are_seeded_and_reproducible():
    a = load_encoder("embedx-tiny", "none", seed=5)
    b = load_encoder("embedx-tiny", "none", seed=5)
    c = load_encoder("embedx-tiny", "none", seed=6)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a.encode_images(x), b.encode_images(x))
    assert not np.allclose(a.encode_images(x), c.encode_images(x))


def test_class_texts_average_normalized_templates_then_renormalize():
    enc = load_encoder("embedx-tiny", "none", seed=1)
    templates = ["a photo of a {}.", "a drawing of a {}.", "{}"]
    got = enc.encode_classes(["cat", "dog"], templates)
    for k, c in enumerate(["cat", "dog"]):
        f = enc.encode_texts([t.format(c) for t in templates]).astype(np.float64)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        m = f.mean(0)
        np.testing.assert_allclose(got[k], m / np.linalg.norm(m), atol=1e-6)
    # open_clip's own zero-shot classifier agrees
    import open_clip

    w = open_clip.build_zero_shot_classifier(enc.model, enc.tokenizer, ["cat", "dog"], templates, device="cpu")
    np.testing.assert_allclose(got, w.T.numpy(), atol=1e-5)


def test_local_checkpoint_file_loads_and_is_fingerprinted(tmp_path):
    enc = load_encoder("embedx-tiny", "none", seed=9)
    path = tmp_path / "tiny.pt"
    torch.save(enc.model.state_dict(), path)
    again = load_encoder("embedx-tiny", str(path))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(again.encode_images(x), enc.encode_images(x), atol=1e-6)
    import hashlib

    assert again.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(EmbedxError, match="cannot load ViT-S-32-alt"):
        load_encoder("ViT-S-32-alt", str(path))  # a checkpoint of another architecture


def test_unknown_model_and_missing_checkpoint():
    with pytest.raises(EmbedxError, match="unknown open_clip model 'ViT-B-33'.*did you mean"):
        load_encoder("ViT-B-33")
    with pytest.raises(EmbedxError, match="checkpoint file not found"):
        load_encoder("embedx-tiny", "/no/such/file.pt")


def test_pretrained_tag_offline_fails_fast_with_one_line():
    import time

    t = time.time()
    with pytest.raises(EmbedxError, match="offline") as e:
        load_encoder("ViT-S-32-alt", "openai", offline=True)
    assert time.time() - t < 30
    assert "\n" not in str(e.value)


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, rng):
    root = _image_folder(tmp_path / "imgs", rng)
    out = str(tmp_path / "s.zarr")
    res = embed_to_store(out, f"folder:{root}", "embedx-tiny", seed=2, encode=EncodeOptions(batch_size=3, workers=0),
                         progress=False)
    s = Store(out)
    assert s.n_images == 7 and res.meta["n_skipped"] == 1
    assert s.meta["skipped"][0]["id"] == "dog/broken.png" and "Error" in s.meta["skipped"][0]["error"]
    assert "dog/broken.png" not in list(s.ids())
    np.testing.assert_array_equal(s.labels(), [0, 0, 0, 1, 1, 1, 1])
    assert s.n_texts == 2 and list(s.text_names()) == ["cat", "dog"]
    # --strict fails instead, with one line
    rc, _, err = run_embedx("embed", "-m", "embedx-tiny", "--data", f"folder:{root}", "--out",
                            str(tmp_path / "strict.zarr"), "--strict", "-b", "2")
    assert_one_line_error(rc, err, "cannot read image", "broken.png")


def test_fifos_and_undecodable_names_are_skipped_and_listed(tmp_path, rng):
    root = _image_folder(tmp_path / "imgs", rng, bad=False)
    os.mkfifo(root / "cat" / "pipe.png")  # reading it would block forever
    bad_name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    Image.fromarray(rng.integers(0, 255, (9, 9, 3), dtype=np.uint8)).save(os.path.join(root / "dog", bad_name))
    out = str(tmp_path / "s.zarr")
    res = embed_to_store(out, f"folder:{root}", "embedx-tiny", seed=0, encode=EncodeOptions(batch_size=4, workers=0),
                         progress=False)
    assert res.meta["rows_committed"] == 7
    skipped = {s["id"]: s["error"] for s in Store(out).meta["skipped"]}
    assert skipped == {os.path.join("cat", "pipe.png"): "not a regular file",
                       os.path.join("dog", "caf\\xe9.png"): "file name is not valid UTF-8 (rename it to embed it)"}
    rc, _, err = run_embedx("embed", "-m", "embedx-tiny", "--data", f"folder:{root}", "--out", out, "--overwrite")
    assert rc == 0 and "internal" not in err, err  # through the CLI too: no crash, the same listing
    assert {s["id"] for s in Store(out).meta["skipped"]} == set(skipped)


def test_csv_sources_that_cannot_work_are_refused_before_any_store(tmp_path):
    (tmp_path / "urls.csv").write_text("image,caption\nhttps://x.org/a.jpg,a cat\nhttps://x.org/b.jpg,a dog\n")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 50)
    (tmp_path / "missing.csv").write_text("image,label\nno/such.png,cat\nnor/this.png,dog\n")
    for name, msg in (("urls", "are URLs"), ("binary", "not a UTF-8 CSV"), ("missing", "none of its 2 image paths")):
        out = tmp_path / f"{name}.zarr"
        rc, _, err = run_embedx("embed", "-m", "embedx-tiny", "--data", f"csv:{tmp_path / name}.csv", "--out", out)
        assert_one_line_error(rc, err, msg)
        assert not out.exists()


def test_workers_do_not_change_the_result(tmp_path):
    a = embed_to_store(str(tmp_path / "a.zarr"), "digits", "embedx-tiny", seed=1, source=SourceOptions(limit=100),
                       encode=EncodeOptions(batch_size=16, workers=0), progress=False)
    b = embed_to_store(str(tmp_path / "b.zarr"), "digits", "embedx-tiny", seed=1, source=SourceOptions(limit=100),
                       encode=EncodeOptions(batch_size=16, workers=2), write=WriteOptions(dtype="float32"),
                       progress=False)
    assert a.meta["rows_committed"] == b.meta["rows_committed"] == 100
    np.testing.assert_allclose(Store(str(tmp_path / "a.zarr")).images().astype(np.float32),
                               Store(str(tmp_path / "b.zarr")).images(), atol=1e-3)
    assert Store(str(tmp_path / "b.zarr")).dtype == np.float32


def test_captions_make_a_paired_store(tmp_path, rng):
    _image_folder(tmp_path / "imgs", rng, bad=False)
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([[f"imgs/cat/{k}.png", f"cat number {k}"] for k in range(3)])
    out = str(tmp_path / "p.zarr")
    embed_to_store(out, f"csv:{tmp_path / 'caps.csv'}", "embedx-tiny", seed=0, encode=EncodeOptions(batch_size=2),
                   progress=False)
    s = Store(out)
    assert s.paired and s.n_images == s.n_texts == 3
    np.testing.assert_array_equal(s.labels(), [0, 1, 2])
    enc = load_encoder("embedx-tiny", "none", seed=0)
    np.testing.assert_allclose(s.texts().astype(np.float32), enc.encode_texts([f"cat number {k}" for k in range(3)]),
                               atol=2e-3)


def test_cli_bad_inputs_give_one_line(tmp_path):
    for args, frag in [
        (["embed", "-m", "NoSuchNet", "--data", "digits", "--out", tmp_path / "a.zarr"], "unknown open_clip model"),
        (["embed", "-m", "embedx-tiny", "--data", f"folder:{tmp_path}/missing", "--out", tmp_path / "b.zarr"],
         "folder not found"),
        (["embed", "-m", "ViT-S-32-alt", "-p", "openai", "--data", "digits", "--out", tmp_path / "c.zarr"],
         "cannot load"),
        (["embed", "-m", "embedx-tiny", "--data", "digits", "-b", "0", "--out", tmp_path / "d.zarr"], "batch-size"),
        (["info", tmp_path / "nothing.zarr"], "no store at"),
    ]:
        r = invoke(*args)
        assert_one_line_error(r.exit_code, r.stderr, frag)
        assert not os.path.exists(str(args[-1])) or args[0] == "info"


def test_console_script_error_has_no_traceback(tmp_path):
    rc, _, err = run_embedx("embed", "-m", "NoSuchNet", "--data", "digits", "--out", tmp_path / "a.zarr")
    assert rc == 2
    assert_one_line_error(rc, err, "unknown open_clip model")


def test_info_json_of_an_embedded_store(tmp_path):
    out = str(tmp_path / "s.zarr")
    embed_to_store(out, "digits", "embedx-tiny", seed=0, source=SourceOptions(limit=130), progress=False)
    r = invoke("info", out, "--json")
    assert r.exit_code == 0
    import json

    d = json.loads(r.stdout)
    assert {k: d[k] for k in ("n_images", "n_texts", "dim", "dtype", "rows_committed", "complete")} == {
        "n_images": 130, "n_texts": 10, "dim": 32, "dtype": "float16", "rows_committed": 130, "complete": True}
    assert d["model"] == "embedx-tiny" and d["pretrained"] == "none" and d["size_bytes"] > 0


def test_store_records_the_models_logit_scale_for_the_zero_shot_scores(tmp_path):
    """embed records exp(logit_scale) of the model; LEEP/NCE use it unless a scale is given."""
    from embedx import transferability as transfer

    out = str(tmp_path / "s.zarr")
    embed_to_store(out, "digits:test:classes=0-4", "embedx-tiny", seed=0, progress=False)
    enc = load_encoder("embedx-tiny", "none", seed=0, device="cpu")
    scale = float(enc.model.logit_scale.detach().exp())
    s = Store(out)
    assert s.meta["logit_scale"] == pytest.approx(scale, rel=1e-6) and abs(scale - 100.0) > 1  # open_clip init: 1/0.07
    got = transfer.compute(s, ["leep", "nce"])
    assert dict(got) == dict(transfer.compute(s, ["leep", "nce"], logit_scale=s.meta["logit_scale"]))
    assert got["leep"] != transfer.compute(s, ["leep"], logit_scale=100.0)["leep"]
