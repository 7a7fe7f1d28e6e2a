"""Evaluation: metrics as plain functions (``metrics_*``) and tasks that run a model over a dataset."""
from vlmkit.eval.captioning import caption_metrics
from vlmkit.eval.metrics_retrieval import retrieval_metrics
from vlmkit.eval.metrics_vqa import normalize_answer, vqa_accuracy
from vlmkit.eval.metrics_zeroshot import (DEFAULT_TEMPLATES, build_classifier, confusion_matrix, zeroshot_logits,
                                          zeroshot_metrics)
from vlmkit.eval.record import benchmark_record, write_json

__all__ = ["DEFAULT_TEMPLATES", "benchmark_record", "build_classifier", "caption_metrics", "confusion_matrix",
           "normalize_answer", "retrieval_metrics", "vqa_accuracy", "write_json", "zeroshot_logits", "zeroshot_metrics"]
