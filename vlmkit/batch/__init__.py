"""Batch jobs over many samples: read from shards or manifests -> decode safely -> run a model capability in
batches -> write results, on the ``local`` executor (worker processes, the default) or on Ray Data (``ray``).

    units = plan_units(["photos/"])                       # one unit per shard, or per 1000 images
    summary = run_job(EmbedImages("runs/clip"), units, "work/", executor="local")   # resumable per unit
    table = read_results("work/")                         # ids, vectors [N, D], metadata columns, bad records
"""
from vlmkit.batch.jobs import BatchJob, EmbedImages, ImagePreparer
from vlmkit.batch.results import ResultTable, WorkDir, read_results
from vlmkit.batch.run import EXECUTORS, JobSummary, run_job
from vlmkit.batch.units import DEFAULT_UNIT_SIZE, Record, WorkUnit, plan_units

__all__ = ["BatchJob", "DEFAULT_UNIT_SIZE", "EXECUTORS", "EmbedImages", "ImagePreparer", "JobSummary", "Record",
           "ResultTable", "WorkDir", "WorkUnit", "plan_units", "read_results", "run_job"]
