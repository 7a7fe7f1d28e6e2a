"""The Ray executor: the same job on Ray Data, for a cluster (or a local Ray instance started on loopback).

Read tasks fetch each unit's raw image bytes (no Ray-side image decoding, so vlmkit's safe decoder sees bad
images); ``map_batches`` runs an actor pool holding the model (a GPU per actor when the cluster has GPUs); the
driver assembles each unit's rows and writes its part files, so resume works unit by unit as on the local
executor. On a cluster the work folder must be on storage the driver can write.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from vlmkit.batch.jobs import BatchJob, prepare_record
from vlmkit.batch.results import UnitAssembler
from vlmkit.batch.units import Record, WorkUnit
from vlmkit.data.decode import BadSample

_CONTROL = ("unit_index", "row", "ok", "reason", "detail", "meta_json")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError("--executor ray needs Ray Data: pip install 'vlmkit[ray]'") from error
    return ray


def _read_unit(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A Ray task: the raw bytes of every record of one unit (a read failure travels as its reason)."""
    rows = []
    for row, fields in enumerate(json.loads(item["records"])):
        record = Record(**fields)
        try:
            data, reason, detail = record.image.read(), "", ""
        except BadSample as bad:
            data, reason, detail = b"", bad.reason, bad.detail
        rows.append({"unit_index": int(item["unit_index"]), "row": row, "record": json.dumps(fields),
                     "data": data, "reason": reason, "detail": detail})
    return rows


class _JobActor:
    """An actor of the pool: loads the job's model once, then prepares and runs batches of rows."""

    def __init__(self, job: BatchJob, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        job.setup()
        self.job, self.prepare = job, job.preparer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(batch["row"])
        ok, reasons, details, metas, good = np.zeros(size, bool), [""] * size, [""] * size, ["{}"] * size, []
        for position in range(size):
            record = Record(**json.loads(batch["record"][position]))
            if batch["reason"][position]:
                reasons[position], details[position] = str(batch["reason"][position]), str(batch["detail"][position])
                continue
            prepared = prepare_record(self.prepare, record, bytes(batch["data"][position]))
            if isinstance(prepared, BadSample):
                reasons[position], details[position] = prepared.reason, prepared.detail
                continue
            ok[position], metas[position] = True, json.dumps(prepared[1])
            good.append((position, prepared[0]))
        columns: dict[str, np.ndarray] = {
            "unit_index": np.asarray(batch["unit_index"], np.int64), "row": np.asarray(batch["row"], np.int64),
            "ok": ok, "reason": np.asarray(reasons, object), "detail": np.asarray(details, object),
            "meta_json": np.asarray(metas, object)}
        if good:
            outputs = self.job.run([item for _, item in good])
            where = [position for position, _ in good]
            for name, values in outputs.items():
                values = np.asarray(values)
                full = np.zeros((size, *values.shape[1:]), values.dtype)
                full[where] = values
                columns[name] = full
        return columns


def run_ray(job: BatchJob, todo: Sequence[tuple[int, WorkUnit]], assembler: UnitAssembler, *,
            ray_address: str | None = None, actors: int | None = None, progress: bool = True,
            on_bad_sample: str = "skip") -> dict[str, Any]:
    """Run ``job`` over ``todo`` on Ray Data; returns the pool it used ({"actors", "gpus_per_actor", ...}).

    With no address and no running Ray, a local instance is started on 127.0.0.1 (and stopped afterwards).
    The pool is sized from the resources Ray reports: one actor per GPU, else one per CPU but one (the read
    tasks need a CPU too: a pool that takes every CPU starves them and hangs).
    """
    ray = _import_ray()
    import ray.data

    started_here = False
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        started_here = True
    try:
        resources = ray.available_resources()
        cpus, gpus = float(resources.get("CPU", 1.0)), int(resources.get("GPU", 0.0))
        size = actors or (gpus if gpus >= 1 else max(1, int(cpus) - 1))
        # each actor reserves one CPU; its torch threads share the cluster's cores among the actors (the read
        # tasks are I/O-bound), so one actor on a small machine is not held to one thread
        threads = max(1, int(cpus) // size)
        pool = {"actors": size, "gpus_per_actor": 1 if gpus >= 1 else 0, "threads_per_actor": threads,
                "cluster_cpus": cpus, "cluster_gpus": gpus}
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        items = [{"unit_index": index, "records": json.dumps([record.as_dict() for record in unit.records])}
                 for index, unit in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        dataset = dataset.flat_map(_read_unit)
        dataset = dataset.map_batches(
            _JobActor, fn_constructor_kwargs={"job": job, "threads": threads}, batch_size=job.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1,
            num_gpus=pool["gpus_per_actor"])
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            outputs = [name for name in batch if name not in _CONTROL]
            for position in range(len(batch["row"])):
                unit_index, row = int(batch["unit_index"][position]), int(batch["row"][position])
                if not batch["ok"][position]:
                    record = assembler.units[unit_index].records[row]
                    bad = BadSample(str(batch["reason"][position]), key=record.id,
                                    detail=str(batch["detail"][position]))
                    if on_bad_sample == "error":
                        raise bad
                    assembler.add(unit_index, row, bad)
                    continue
                result = json.loads(batch["meta_json"][position])
                result.update({name: batch[name][position] for name in outputs})
                assembler.add(unit_index, row, result)
        return pool
    finally:
        if started_here:
            ray.shutdown()
