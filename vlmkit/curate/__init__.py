"""Data curation in the DataComp style: filter, score, deduplicate and balance an image-text pool.

    result = curate(["pool/shards"], "curated/", "datacomp", model="runs/clip",
                    overrides=["image_based.reference=imagenet/train"], executor="local")
    result.report["kept"], result.kept_ids          # OUT/shards/curated-*.tar, OUT/samples.parquet, OUT/report.html

Pass 1 computes every sample's features on the batch layer's executors (resumable per shard); pass 2 runs the
stages in order on the driver, so both executors give the same decisions. Stages: see ``STAGES``.
"""
from vlmkit.curate.config import STAGES, Pipeline, load_pipeline, pipeline_from_dict, pipeline_names
from vlmkit.curate.decide import Decisions, apply_stages
from vlmkit.curate.jobs import SampleFeatures
from vlmkit.curate.pipeline import CurationResult, curate
from vlmkit.curate.table import SampleTable

__all__ = ["STAGES", "CurationResult", "Decisions", "Pipeline", "SampleFeatures", "SampleTable", "apply_stages",
           "curate", "load_pipeline", "pipeline_from_dict", "pipeline_names"]
