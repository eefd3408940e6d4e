"""What the drift report says about each measure: its group (measures of one group share one scale, so equal
changes look equal), the direction that is better, and a one-line definition.

  accuracy   zero-shot top-k, mean per-class recall, retrieval recall@k: fractions of images (or captions) in
             [0, 1]; up is better
  cosine     mean cosines (acs, iimm, iimm_inter, iimm_intra, text_intra) and silhouettes: values in [-1, 1];
             which way is better depends on the question, so their changes are drawn neutral
  distance   the modality gap |mean image - mean text| of unit rows, in [0, 2]; neutral too
  other      a measure registered later without a group here: one shared scale, its registry summary as definition
"""
from __future__ import annotations

GROUPS = {
    "accuracy": ("Accuracy and recall", "fractions in [0, 1]; up is better"),
    "cosine": ("Cosine similarities and silhouettes", "values in [-1, 1]; better or worse depends on the question"),
    "distance": ("Distances", "lengths of unit-vector differences, in [0, 2]"),
    "other": ("Other measures", "one shared scale"),
}

DEFINITIONS = {
    "acs": "mean cosine between each image and its own class text",
    "iimm_inter": "mean cosine between each image and the other classes' texts",
    "iimm_intra": "mean cosine between two images (how tightly the images cluster)",
    "iimm": "inter-/intra-modal mismatch: (iimm_inter + mean image-image cosine of the labelled images) / 2",
    "text_intra": "mean cosine between two class texts",
    "gap": "modality gap: distance between the mean image and the mean text",
    "silhouette_euclidean": "how far images and texts separate into two clusters (Euclidean; 1 apart, 0 mixed)",
    "silhouette_cosine": "how far images and texts separate into two clusters (cosine; 1 apart, 0 mixed)",
    "silhouette_class_euclidean": "how far the labelled images separate into their classes (Euclidean)",
    "zeroshot_top1": "share of images whose own class text scores highest",
    "zeroshot_top5": "share of images whose own class text is among the 5 highest",
    "zeroshot_mean_per_class_recall": "top-1 accuracy of each class, averaged over the classes",
}


def group(measure: str) -> str:
    """The group of ``measure`` (module docstring)."""
    if measure.startswith("zeroshot_") or "recall" in measure:
        return "accuracy"
    if measure in ("gap",):
        return "distance"
    if measure.startswith(("silhouette", "iimm")) or measure in ("acs", "text_intra"):
        return "cosine"
    return "other"


def direction(measure: str) -> int:
    """+1 when a larger value is better (accuracies, recalls), 0 when the direction is not known."""
    return 1 if group(measure) == "accuracy" else 0


def definition(measure: str) -> str:
    """One line: what ``measure`` is (retrieval recalls spelled out; else the registry's summary)."""
    if measure in DEFINITIONS:
        return DEFINITIONS[measure]
    for side, what in (("i2t", ("images", "its caption", "captions")), ("t2i", ("captions", "its image", "images"))):
        if measure.startswith(f"{side}_recall@"):
            k = measure.split("@", 1)[1]
            return f"share of {what[0]} whose {what[1]} is among the {k} nearest {what[2]}"
    from embedx.engine import registry

    known = registry.scores("measure").get(measure)
    return (known.summary if known else "") or measure  # a name the registry does not know: the name itself
