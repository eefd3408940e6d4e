"""Class-balanced subsets (``--per-class``) and replaced class names (``classnames``): the source, ``embed`` and
``finetune`` against a brute-force selection of the same items; bad values are one line."""
import numpy as np
import pytest

import embedx
from embedx.errors import EmbedxError
from embedx.finetune.train import class_source, finetune
from embedx.sources.catalog import parse_source
from tests.conftest import assert_one_line_error, run_embedx


def _first_per_class(labels, n):
    """Brute force: walk the items in order, keep one while its class has fewer than n kept."""
    kept, count = [], {}
    for i, c in enumerate(labels):
        if count.get(int(c), 0) < n:
            kept.append(i)
            count[int(c)] = count.get(int(c), 0) + 1
    return kept


@pytest.mark.parametrize("spec,n", [("digits:train", 3), ("digits:test:classes=2,5,7", 1), ("digits:test", 10_000)])
def test_per_class_keeps_the_first_n_of_every_class_in_order(spec, n):
    src = parse_source(spec)
    sub = src.per_class(n)
    keep = _first_per_class(src.labels, n)
    assert sub.ids == [src.ids[i] for i in keep]
    assert sub.labels.tolist() == [int(src.labels[i]) for i in keep]
    for j in (0, len(keep) // 2, len(keep) - 1):  # the items load as the parent's
        assert np.array_equal(np.asarray(sub.load(j)), np.asarray(src.load(keep[j])))
    counts = np.bincount(sub.labels, minlength=len(src.classnames))
    full = np.bincount(src.labels, minlength=len(src.classnames))
    assert (counts == np.minimum(full, n)).all()
    assert sub.fingerprint() != src.fingerprint() or n >= full.max()


def test_a_grouped_source_gets_every_class(tmp_path):
    """A source listed class by class (a folder) gives one class with --limit, every class with --per-class."""
    from PIL import Image

    for c in ("ant", "bee", "cat"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new("RGB", (8, 8), (40 * i, 10, 200)).save(tmp_path / c / f"{i}.png")
    src = parse_source(f"folder:{tmp_path}")
    assert set(src.head(5).labels.tolist()) == {0}
    assert np.bincount(src.per_class(2).labels).tolist() == [2, 2, 2]


def test_renamed_replaces_the_names_only():
    src = parse_source("digits:test:classes=0,1")
    out = src.renamed(["zero", "one"])
    assert out.classnames == ["zero", "one"] and out.ids == src.ids and (out.labels == src.labels).all()
    with pytest.raises(EmbedxError, match="2 non-empty names needed"):
        src.renamed(["zero"])
    with pytest.raises(EmbedxError, match="2 non-empty names needed"):
        src.renamed(["zero", " "])


def test_embed_per_class_and_classnames_in_the_store(tmp_path):
    out = tmp_path / "s.zarr"
    embedx.embed(out, "digits:test:classes=0,1,2", "embedx-tiny", per_class=4, limit=10,
                 classnames=["nought", "one", "two"], progress=False)
    s = embedx.open(out)
    src = parse_source("digits:test:classes=0,1,2")
    keep = _first_per_class(src.labels, 4)[:10]
    assert [str(i) for i in s.ids()] == [src.ids[i] for i in keep]
    assert s.labels().tolist() == [int(src.labels[i]) for i in keep]
    assert [str(n) for n in s.text_names()] == ["nought", "one", "two"]


def test_cli_per_class_and_bad_values(tmp_path):
    rc, out, err = run_embedx("embed", "-m", "embedx-tiny", "--data", "digits:test", "--per-class", "2",
                              "--out", str(tmp_path / "a.zarr"), "-q")
    assert rc == 0, err
    assert np.bincount(embedx.open(tmp_path / "a.zarr").labels()).tolist() == [2] * 10
    rc, _, err = run_embedx("embed", "-m", "embedx-tiny", "--data", "digits:test", "--per-class", "0",
                            "--out", str(tmp_path / "b.zarr"))
    assert_one_line_error(rc, err, "--per-class must be positive")
    assert not (tmp_path / "b.zarr").exists()


def test_finetune_records_per_class_and_refuses_another_on_resume(tmp_path):
    src = class_source("digits:train", per_class=3, classnames=[f"digit {k}" for k in range(10)])
    assert len(src) == 30 and src.classnames[3] == "digit 3"
    run = tmp_path / "run"
    cfg = finetune(str(run), "digits:train", "embedx-tiny", method="bitfit", per_class=3, epochs=1, lr=0.01,
                   val_fraction=0.2, progress=False, device="cpu")
    assert cfg["per_class"] == 3 and cfg["dataset_sha256"] == class_source("digits:train", per_class=3).fingerprint()
    with pytest.raises(EmbedxError, match="refusing to resume .* per_class=3, this run asks for per_class=4"):
        finetune(str(run), "digits:train", "embedx-tiny", method="bitfit", per_class=4, epochs=1, lr=0.01,
                 val_fraction=0.2, progress=False, device="cpu")
