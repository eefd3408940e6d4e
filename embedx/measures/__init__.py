"""The papers' measures of a store, exact and streamed (definitions: DESIGN.md, "Measures").

Rows are L2-normalized first (float32 compute, float64 sums). X: N images, T: C texts, y: labels (rows with
y = -1 are left out of the label measures):

  acs          mean_i x_i.t_{y_i}                                       ACS (Niss et al., paper A)
  iimm_inter   mean_i (sum_c x_i.t_c - x_i.t_{y_i}) / (C-1)             S_inter (paper B)
  iimm_intra   mean_{i<j} x_i.x_j = (|sum x|^2 - N) / (N(N-1))          S_intra (paper B), over every image
  iimm         (iimm_inter + S_intra of the labelled images) / 2        IIMM (paper B): both terms over the
                                                                        labelled images, as the authors' code
  gap, iimm_intra and the modality silhouettes cover every image, labelled or not.
  text_intra   mean_{c<c'} t_c.t_c'
  gap          |mean_i x_i - mean_c t_c|                                modality gap (Liang et al. 2022)
  silhouette_* sklearn silhouette_score(vstack(X, T), [1]*N + [0]*C, metric=euclidean|cosine)  (paper A)
  zeroshot_*   top-1 / top-5: fewer than k class texts score strictly higher than the true one (bit-identical
               texts: the lowest index first); and the mean per-class recall
  *_recall@k   paired stores: a query hits if any of its positives is among its top k

One streaming pass computes every O(N d) measure and zero-shot accuracy (see ``stream``); the cosine
silhouette joins that pass when the store's recorded sum of image rows checks out, else it takes a second
pass (``cosine``). Euclidean silhouette and retrieval go through the kernels in ``embedx.kernels``. ``scores``
registers each measure (``embedx.engine.registry``), ``engine`` holds their needs and runs the planner.
"""
from embedx import _lazy

__all__ = ['BASE', 'CLASS_SILHOUETTE', 'NOT_MEASURES', 'RETRIEVAL', 'TIES', 'available', 'compute']
__getattr__ = _lazy.exports(__name__, {name: "embedx.measures.api" for name in __all__})  # loaded on first use
