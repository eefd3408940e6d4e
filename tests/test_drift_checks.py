"""Drift checks the comparison (issue 26): stores of different samples are refused unless forced, a swapped
pair is warned about, and the report reads right (shared scales, equal projection ranges, definitions, plain
options, no absolute path, the change on other tasks coloured by its sign). Real embeds of digits, a real
(tiny) finetune run, real zarr stores."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import zarr

import embedx
from embedx import drift_analysis as D
from embedx.drift_analysis import glossary, report
from embedx.errors import EmbedxError
from tests.conftest import assert_one_line_error, invoke, lora_run_and_stores, run_embedx


def _embed(tmp_path, name, data, limit=24):
    path = str(tmp_path / name)
    r = invoke("embed", "-m", "embedx-tiny", "--data", data, "--limit", limit, "--out", path)
    assert r.exit_code == 0, r.stderr
    return path


def _edit_meta(src, dst, **changes):
    shutil.copytree(src, dst)
    g = zarr.open_group(dst, mode="r+")
    g.attrs["embedx"] = dict(g.attrs["embedx"], **changes)
    return dst


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return {"test": _embed(root, "test.zarr", "digits:test"), "rot": _embed(root, "rot.zarr", "digits:test:rotate=90"),
            "test2": _embed(root, "test2.zarr", "digits:test"), "root": root}


def test_different_datasets_are_refused_unless_forced(digits, tmp_path):
    a, rot = digits["test"], digits["rot"]
    # the same N, ids, labels and class names: only the dataset spec the stores record tells them apart
    assert (np.asarray(embedx.open(a).ids()) == np.asarray(embedx.open(rot).ids())).all()
    rc, out, err = run_embedx("drift", a, rot)
    assert rc == 2
    assert_one_line_error(rc, err, "hold different samples", "dataset 'digits:test[:24]' vs "
                          "'digits:test:rotate=90[:24]'", "--force compares row i with row i anyway")
    assert err.startswith("error: /")  # the message itself, no flag in front
    with pytest.raises(EmbedxError, match="different samples") as e:
        embedx.drift(a, rot)
    assert "force=True" in str(e.value)
    # as --others too
    r = invoke("drift", a, digits["test2"], "--others", f"r={a}:{rot}")
    assert_one_line_error(r.exit_code, r.stderr, "different samples", "rotate=90")
    # --force compares them row by row and says so
    r = invoke("drift", a, rot, "--force", "--knn-sample", 20)
    assert r.exit_code == 0, r.stderr
    assert "forced: the stores hold different samples" in r.stdout and "rotate=90" in r.stdout
    d = embedx.drift(a, rot, force=True, knn_sample=20).to_dict()
    assert len(d["forced"]) == 1 and "rotate=90" in d["forced"][0] and d["warnings"] == []
    # the same spec embedded twice is the same samples: no refusal, nothing forced
    d = embedx.drift(a, digits["test2"], knn_sample=20).to_dict()
    assert d["forced"] == [] and d["displacement_mean"] == 0.0


def test_changed_data_and_split_are_refused(digits, tmp_path):
    a = digits["test"]
    changed = _edit_meta(a, str(tmp_path / "changed.zarr"), dataset_sha256="0" * 64)
    r = invoke("drift", a, changed)
    assert_one_line_error(r.exit_code, r.stderr, "the data behind 'digits:test[:24]' changed", "000000000000")
    train = _edit_meta(a, str(tmp_path / "train.zarr"), split="train")
    test = _edit_meta(a, str(tmp_path / "test.zarr"), split="test")
    r = invoke("drift", train, test)
    assert_one_line_error(r.exit_code, r.stderr, "split 'train' vs 'test'", "--force")
    assert invoke("drift", train, test, "--force", "--knn-sample", 10).exit_code == 0
    assert invoke("drift", train, a, "--knn-sample", 10).exit_code == 0  # one split unknown: nothing to compare
    # a different number of images can never be forced (there is no row i to pair)
    short = _embed(tmp_path, "short.zarr", "digits:test", limit=20)
    r = invoke("drift", a, short, "--force")
    assert_one_line_error(r.exit_code, r.stderr, "24 vs 20 images")


def test_swapped_pair_is_warned_once(tmp_path):
    run, base, tuned = lora_run_and_stores(tmp_path, train_limit=64, embed_limit=24)
    rc, out, err = run_embedx("drift", tuned, base, "--knn-sample", "20")
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "look swapped" in lines[0], err
    assert tuned in lines[0] and base in lines[0]
    s = D.compare(tuned, base, knn_sample=20).summary
    assert len(s["warnings"]) == 1 and "look swapped" in s["warnings"][0]
    assert D.compare(base, tuned, knn_sample=20).summary["warnings"] == []  # the right order: no warning
    rc, out, err = run_embedx("drift", base, tuned, "--knn-sample", "20")
    assert rc == 0 and "warning" not in err, err
    page = tmp_path / "sub" / "r.html"
    page.parent.mkdir()
    report.write(D.compare(tuned, base, knn_sample=20), str(page))
    text = page.read_text()
    assert "look swapped" in text
    # the run line: no absolute path of this machine (the run is outside the report's folder: its name only)
    assert str(tmp_path) not in text and os.path.abspath(run) not in text
    assert "finetune run <code>.../run</code>" in text
    page2 = tmp_path / "r2.html"  # the report beside the run: the path relative to it
    report.write(D.compare(base, tuned, knn_sample=20), str(page2))
    assert "<b>run</b> <code>run</code>" in page2.read_text()


def _summary(tmp_path, rng, n=300, c=5, d=12):
    from tests.test_drift import _pair

    a, b = _pair(tmp_path, rng, n, c, d)
    o = _pair(tmp_path, rng, 80, 3, d, name="other")
    return a, b, o


def test_report_shares_one_scale_per_group_and_defines_every_measure(tmp_path, rng):
    a, b, o = _summary(tmp_path, rng)
    res = D.compare(a.path, b.path, [f"cars={o[0].path}:{o[1].path}"], plot_sample=200, knn_sample=50)
    s = res.summary
    groups = report.measure_groups(s)
    assert [m for g in groups.values() for m in g["measures"]] == [m for g in groups for m in s["delta"]
                                                                  if glossary.group(m) == g]
    assert set(groups) == {"accuracy", "cosine", "distance"}
    for g, info in groups.items():
        lo, hi = info["window"]
        vals = [s[side][m] for m in info["measures"] for side in ("before", "after") if s[side][m] is not None]
        assert lo < min(vals) and max(vals) < hi and hi - lo >= 0.1 - 1e-12
        fig = report.group_figure(g, info["measures"], s, info["window"])
        ax = fig.axes[0]
        assert ax.get_xlim() == pytest.approx((lo, hi))  # every measure of the group on this one axis
        drawn = [ln.get_xdata() for ln in ax.get_lines()]
        for m, xs in zip(info["measures"], drawn):  # each segment runs from before to after, on the shared axis
            assert tuple(xs) == pytest.approx((s["before"][m], s["after"][m]))
        labels = ax.get_xticklabels()
        assert len(labels) >= 3 and min(t.get_fontsize() for t in labels) >= 9  # readable ticks
        report._plt().close(fig)
    # a change of -0.05 and one of -0.46 in one group draw in proportion (the issue's -0.05 that looked -0.46)
    fake = {"before": {"iimm": 0.5, "acs": 0.5}, "after": {"iimm": 0.45, "acs": 0.04}, "delta": {"iimm": -0.05,
                                                                                              "acs": -0.46}}
    (info,) = report.measure_groups(fake).values()
    fig = report.group_figure("cosine", info["measures"], fake, info["window"])
    lens = [abs(np.diff(ln.get_xdata())[0]) for ln in fig.axes[0].get_lines()]
    assert lens == pytest.approx([0.05, 0.46])
    report._plt().close(fig)

    page = tmp_path / "r.html"
    report.write(res, str(page))
    text = page.read_text()
    assert text.count('class="measure-chart"') == len(groups)
    defs = re.findall(r'<tr class="measure-row"><td>([^<]+)<.*?<td class="def">([^<]+)</td>', text)
    assert {m for m, _ in defs} == set(s["delta"])
    for m, text_def in defs:
        assert text_def.strip() and text_def.strip() != m and text_def == glossary.definition(m).replace("'", "&#x27;")
    # plain option text: no Python repr
    opts = re.search(r"options: (.*?) &middot; schema", text).group(1)
    assert "=" not in opts and "None" not in opts and "[" not in opts
    assert "measures: all the stores support" in opts and "kNN overlap k: 10" in opts


def test_projection_panels_share_their_ranges(tmp_path, rng):
    a, b, _ = _summary(tmp_path, rng)
    p = D.compare(a.path, b.path, plot_sample=200, knn_sample=50).projection
    p = dict(p, images_after=p["images_after"] * 5.0)  # AFTER spread 5x wider than BEFORE
    fig = report.projection_figure(p)
    before, after = fig.axes[:2]
    assert before.get_xlim() == after.get_xlim() and before.get_ylim() == after.get_ylim()
    (x0, x1), (y0, y1) = report.projection_limits(p)
    for k in ("images_before", "texts_before", "images_after", "texts_after"):
        assert (p[k][:, 0] >= x0).all() and (p[k][:, 0] <= x1).all() and (p[k][:, 1] >= y0).all() and \
            (p[k][:, 1] <= y1).all()
    report._plt().close(fig)


@pytest.mark.parametrize("change", [0.047, -0.047])
def test_change_on_other_tasks_is_coloured_by_its_sign(tmp_path, rng, change):
    """A positive change on the other tasks is an improvement: green ('better'); a negative one is forgetting:
    red. The card says what the sign means."""
    a, b, o = _summary(tmp_path, rng, n=120, c=3, d=8)
    res = D.compare(a.path, b.path, [f"cars={o[0].path}:{o[1].path}"], plot_sample=60, knn_sample=30)
    res.summary["headline"]["forgetting"] = change
    res.summary["forgetting"]["mean_delta"] = change
    html_text = report.render(res)
    card = re.search(r'<div class="label">change on other tasks</div><div class="value (\w+)">([^<]+)</div>'
                     r'<div class="sub">([^<]*)', html_text)
    assert card, "the card is labelled 'change on other tasks'"
    assert card.group(1) == ("better" if change > 0 else "worse") and card.group(2) == f"{change:+.3f}"
    assert "above 0 better, below 0 forgotten" in html_text
    assert "forgetting elsewhere" not in html_text.lower()
    mean_row = re.search(r"<td><b>mean</b></td>(?:<td></td>){4}<td class=\"(\w+)\">", html_text)
    assert mean_row.group(1) == ("better" if change > 0 else "worse")


def test_cli_table_names_the_change_on_other_tasks(tmp_path, rng):
    a, b, o = _summary(tmp_path, rng, n=100, c=3, d=8)
    r = invoke("drift", a.path, b.path, "--others", f"cars={o[0].path}:{o[1].path}", "--knn-sample", 20)
    assert r.exit_code == 0, r.stderr
    assert "change on other tasks (mean of 1; below 0: forgotten)" in r.stdout
    assert "other tasks, zero-shot top-1 after - before (below 0: forgotten):" in r.stdout
    assert json.loads(invoke("drift", a.path, b.path, "--json", "--knn-sample", 20).stdout)["warnings"] == []
