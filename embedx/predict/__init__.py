"""Prediction: fit fine-tuning outcomes on zero-shot measures of measured tasks, predict them for new stores.

Paper B (Niss, Vogt-Lowell & Tsiligkaridis) finds a linear relation between the zero-shot IIMM of a task and
both the in-domain gain of fine-tuning and the forgetting it causes on other tasks, and compares IIMM against
transferability scores by R² and Kendall's τ. ``predict(HISTORY.csv, [STORE, ...])`` does that on your own
history of fine-tuning runs (format: ``embedx.predict.history``):

  outcomes     gain = (ft_acc - zs_acc) / (1 - zs_acc); forgetting = ood_delta (negative = accuracy lost)
  predictors   every numeric column of the CSV, or computed from each row's zero-shot store: the measures of
               ``embedx.measures`` and the transfer scores of ``embedx.transfer``
  fits         per predictor and outcome, OLS + Kendall τ + leave-one-out errors (``embedx.predict.fit``)
  ranking      per outcome, the predictors by R² (highest first)
  targets      for each new store, its predictor values and every fit's prediction with a 95% prediction
               interval, clipped to the range the outcome can take (gain <= 1 and >= -zs / (1 - zs) with zs the
               store's own zero-shot top-1; forgetting in [-1, 1])
  caution      fewer than 10 runs: a warning, and the R² a predictor unrelated to the outcome reaches one time
               in 20 (``embedx.predict.fit.chance_r2``)

The paper fits per model, often per method: filter rows with ``where`` (``{"model": "ViT-B-32"}``).
"""
from embedx.predict.engine import predict
from embedx.predict.history import OUTCOMES, append_row
from embedx.predict.predictors import (
    DEFAULT_MEASURES,
    DEFAULT_STORE_PREDICTORS,
    DEFAULT_TRANSFER,
    TRANSFER_SCORES,
    StoreCache,
    computable,
)

__all__ = ["DEFAULT_MEASURES", "DEFAULT_STORE_PREDICTORS", "DEFAULT_TRANSFER", "OUTCOMES", "TRANSFER_SCORES",
           "StoreCache", "append_row", "computable", "predict"]
