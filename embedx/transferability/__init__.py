"""Transferability scores (``embedx.transfer(...)``, ``embedx transfer``) of a store's image embeddings and class labels, streamed (DESIGN.md, "Prediction").

Rows are L2-normalized first (as the authors do with sklearn.preprocessing.normalize) and computed on in float64;
rows labelled -1 are left out; "classes" are the labels with at least one row (K of them, K >= 2). X: N x d
features, y: labels, mu_c / n_c: class means / sizes, T: the class prompts' text embeddings. Higher is better for
every score (the features separate the target classes more; expected to transfer better).

  hscore        tr(pinv(Cov X) Cov g), g_i = mu_{y_i}, both covariances 1/(N-1)
                Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019
  gbc           -sum_{c1 != c2} exp(-D_B(c1, c2)), Bhattacharyya distance of per-class spherical Gaussians
                (variance max(var, 1e-4), d-dimensional determinant as in the paper)
  gbc_diagonal  the same with diagonal Gaussians
                Pandy et al., "Transferability Estimation using Bhattacharyya Class Separability", CVPR 2022
  transrate     R(Z) - (1/K) sum_k R(Z_k), Z = X - mean X, R(Z) = 1/2 logdet(I + Z^T Z / (n 1e-4))
                Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022
  logme         mean_c of the maximum log evidence / N of Bayesian linear regression of the one-hot target of c on X
                You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021
  sfda          mean_i p(y_i | x'_i) of a regularized FDA refitted on ConfMix-challenged features x'
                Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a Self-challenging
                Fisher Space", ECCV 2022
  leep          (1/N) sum_i ln sum_z P(y_i | z) theta(x_i)_z, theta = softmax(logit_scale x^ T^^T), the zero-shot
                classifier as the source model
                Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020
  nce           sum_{y,z} P(y, z) ln P(y | z) = -H(Y | Z), z_i = argmax theta(x_i)
                Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019

Each module (``hscore``, ``gbc``, ``transrate``, ``logme``, ``sfda``, ``leep``) states its formula and how it
streams; ``scores`` registers them (``embedx.engine.registry``); ``engine`` holds their needs and runs the planner;
``moments`` the block sweep and the shared sums; ``reference`` the plain in-memory float64
implementations the tests and benchmark hold these against. Memory is bounded by the block size (about 32 MiB of
float64 rows) plus d x d matrices (and K d^2 for TransRate, in groups beyond ``transrate.BUDGET_BYTES``), whatever
N is. Passes over the rows: one shared pass for every score, a second for leep and sfda, a third for sfda.
"""
from embedx import _lazy

__all__ = ['DEFAULT', 'NEED_TEXTS', 'SCORES', 'SHARED', 'Result', 'compute', 'compute_arrays', 'store_logit_scale']
__getattr__ = _lazy.exports(__name__, {name: "embedx.transferability.api" for name in __all__})  # loaded on first use
