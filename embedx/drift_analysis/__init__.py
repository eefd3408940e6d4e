"""Drift analysis (``embedx.drift(...)``, ``embedx drift``): what moved between two embeddings of the same samples (DESIGN.md, "Drift").

``compare(BEFORE, AFTER)`` takes two stores of the same samples (same N, same ids in the same order, same d)
and returns:

  before, after   every measure of each store (``embedx.measures.compute``); delta = after - before
  displacement    |y_i - x_i| of the L2-normalized image rows: mean, p50, p95 (exact, all N kept)
  w1_upper_bound  = displacement mean. The empirical distributions mu = 1/N sum_i delta_{x_i} and
                  nu = 1/N sum_i delta_{y_i} are coupled by i <-> i, so W1(mu, nu) <= 1/N sum_i |y_i - x_i|.
  cka_linear      linear CKA of the normalized image rows, from streamed d x d cross-covariances
  knn_overlap     mean |kNN_before(i) & kNN_after(i)| / k, cosine neighbours among the images (self excluded);
                  k is ``knn_k`` beside it (a key never changes with an option)
  text_drift      the text side (``embedx.drift_analysis.textside``): per class prompt / caption cosine and displacement,
                  their mean / p50 / p95 / max, linear CKA of the text rows (float64)
  per_class       class stores: zero-shot top-1 per class before/after and the change, and the class prompt's
                  cosine / displacement
  forgetting      per other task (``others``): zero-shot top-1 after - before, and their mean
  headline        task gain, per-class spread, forgetting, and the finetune run (``embedx.drift_analysis.headline``)
  schema, embedx_version, created, stores, options   the shared header (``embedx.provenance``)

Undefined numbers are None (JSON null), never 0.0.

The formulas are in ``embedx.drift_analysis.drift_pass`` and ``embedx.drift_analysis.textside``; ``embedx.drift_analysis.report`` renders the
HTML report.
"""
from embedx import _lazy

__all__ = ["Drift", "compare", "delta", "drift_pass", "forgetting", "open_others", "open_pair", "parse_pair"]
__getattr__ = _lazy.exports(__name__, {**{n: "embedx.drift_analysis.comparison" for n in __all__ if n != "drift_pass"},
                                       "drift_pass": "embedx.drift_analysis.drift_pass"})  # loaded on first use
