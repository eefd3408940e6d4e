"""The kernel benchmarks' shared harness (bench/kernels/harness.py): the sweep grid, the median of timed repeats
after warm-up, Triton skipped with the reason without CUDA, and the CSV and plot it writes; one op's script end to
end with --quick on a tiny grid."""
import csv
import os
import subprocess
import sys

import torch

from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench", "kernels"))
import harness  # noqa: E402


def test_sweep_is_the_grid_and_classes_only_where_the_op_has_them():
    pts = harness.sweep(False, classes=True, n=[8, 16], d=[4], c=[2, 3])
    assert [(p.n, p.d, p.c, p.dtype) for p in pts][:3] == [(8, 4, 2, "float32"), (8, 4, 2, "float16"),
                                                          (8, 4, 3, "float32")]
    assert len(pts) == 2 * 1 * 2 * 2
    assert {p.c for p in harness.sweep(True, classes=False)} == {0}


def test_time_fn_warms_up_then_times_each_repeat():
    calls = []
    ts = harness.time_fn(lambda: calls.append(1), "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and len(ts) == 5 and all(t >= 0 for t in ts)


def test_run_writes_csv_and_plot_and_skips_triton_without_cuda(tmp_path):
    seen = []

    def setup(impl, p, rng, device):
        seen.append((impl, p.n))
        return lambda: sum(range(p.n))

    pts = harness.sweep(False, classes=False, n=[10, 1000], d=[4], dtypes=("float32",))
    rows = harness.run("toy", ["reference", "torch", "triton"], setup, pts, repeats=3, max_n={"reference": 10})
    path, png = harness.write_csv("toy", rows, str(tmp_path)), harness.plot("toy", rows, str(tmp_path))
    with open(path) as f:
        back = list(csv.DictReader(f))
    assert [(r["impl"], r["n"]) for r in back] == [(i, n) for n in ("10", "1000") for i in ("reference", "torch",
                                                                                            "triton")]
    assert back[3]["note"] == "skipped: N > 10 for reference" and back[3]["median_ms"] == ""
    if not torch.cuda.is_available():
        assert all(r["note"].startswith("skipped: no CUDA device") for r in back if r["impl"] == "triton")
        assert ("triton", 10) not in seen
    assert float(back[1]["median_ms"]) >= 0 and back[1]["repeats"] == "3"
    assert os.path.getsize(png) > 1000


def test_one_benchmark_script_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", "kernels", "bench_zeroshot.py"), "--quick",
                          "--repeats", "1", "--threads", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "zeroshot.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["impl"] for r in rows} == {"reference", "torch"} and all(r["median_ms"] for r in rows)
    assert (tmp_path / "zeroshot.png").exists()

