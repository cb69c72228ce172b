"""Evaluation of frozen representations: retrieval (float cosine and binarized Hamming, blockwise
top-k), k-NN and linear-probe classification, embedding extraction, and the evaluate.py runner.

Modules: ``retrieval`` (search + precision/recall/mAP@k), ``knn``, ``linear_probe``, ``embeddings``,
``head_metrics`` (weak-label head mAP, p@k), ``checkpoint`` (find/check/load the module), ``runner``
(``evaluate_run``), ``wandb_log`` (eval metrics into W&B).
"""

from evaluation.knn import knn_accuracy, knn_predict
from evaluation.linear_probe import linear_probe_accuracy, train_linear_probe
from evaluation.retrieval import evaluate_retrieval, pack_signs, topk_search

__all__ = [
    "evaluate_retrieval",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "pack_signs",
    "topk_search",
    "train_linear_probe",
]
