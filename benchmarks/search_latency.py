"""Search-index build time, memory, single-query latency and recall@10 for flat, IVF and IVF-PQ (+ re-ranking).

    nice python benchmarks/search_latency.py [--sizes 10000,100000,1000000] [--dim 512] [--queries 200]
        [--threads 1] [--json] [--tiny]

Vectors are synthetic stand-ins for image embeddings: unit vectors around cluster centres, varying mostly within
a low-dimensional subspace per cluster (real embeddings have a low intrinsic dimension) plus a little isotropic
noise. Queries come from the same distribution but are not in the index. Every index is written and searched
through vlmkit.search (``create_index`` then ``SearchIndex.open``), so latency includes the SQLite metadata of
each hit; ``faiss_p50_ms`` is the FAISS call alone. Memory: the serialized index (``vectors.faiss``), the exact
vectors IVF-PQ keeps on disk for re-ranking (``vectors.npy``), and the RSS growth of a fresh process that opens
the index and answers one query, loaded and memory-mapped. Recall@10 is against exact (numpy) search, at the
default nprobe (32) and, for the IVF kinds, at nprobe 1 and 4.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("flat", "ivf", "ivfpq")
K = 10
NPROBE_SWEEP = (1, 4)  # besides the default 32: how recall falls when fewer IVF lists are visited
# A fresh process: RSS after imports, then after opening the index and one search (argv: index, dim, mmap).
_RSS_CHILD = """
import sys, numpy as np
from vlmkit.search import SearchIndex
from vlmkit.search.faiss_index import import_faiss
import_faiss()
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
before = rss()
index = SearchIndex.open(sys.argv[1], mmap=sys.argv[3] == '1')
index.search(np.ones((1, int(sys.argv[2])), np.float32), 10)
print(rss() - before)
"""


def synthetic_embeddings(count: int, dim: int, *, seed: int, clusters: int | None = None,
                         intrinsic: int = 24) -> np.ndarray:
    """[count, dim] float32 unit vectors: cluster centre + variation in a per-cluster ``intrinsic``-dim subspace
    + small isotropic noise. The same ``seed`` gives the same centres and subspaces (index and queries share
    them); ``count`` only changes how many points are drawn."""
    clusters = clusters or max(10, int(np.sqrt(count) / 2))
    structure = np.random.default_rng(seed)
    centres = structure.standard_normal((clusters, dim)).astype(np.float32)
    bases = structure.standard_normal((clusters, intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic)
    points = np.random.default_rng(seed + count)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 50_000):
        stop = min(start + 50_000, count)
        which = points.integers(0, clusters, stop - start)
        weights = points.standard_normal((stop - start, intrinsic)).astype(np.float32)
        block = centres[which] + 0.8 * np.einsum("ni,nid->nd", weights, bases[which])
        block += 0.15 * points.standard_normal(block.shape).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Row indices [Q, k] of the exact top-k by inner product (in blocks, to bound memory)."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), 100_000):
        scores = queries @ vectors[start:start + 100_000].T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores, ids = np.hstack([best_scores, scores]), np.hstack([best_ids, ids])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return best_ids


def rss_growth(index_path: Path, dim: int, *, mmap: bool) -> int:
    """Bytes of RSS a fresh process gains by opening the index and answering one query."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(index_path), str(dim), "1" if mmap else "0"],
                            capture_output=True, text=True, check=True, env=environment)
    return int(result.stdout.strip().splitlines()[-1])


def _recall(found: list[set[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(hits & set(row.tolist())) / K for hits, row in zip(found, truth)]))


def measure(kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, folder: Path,
            threads: int) -> dict[str, Any]:
    """Build one index of ``kind`` (all threads) and time single queries on ``threads`` FAISS threads."""
    from vlmkit.search import SearchIndex, create_index
    from vlmkit.search.faiss_index import import_faiss

    rows = [{"path": f"/synthetic/{i}.jpg", "sha256": f"{i:064x}"} for i in range(len(vectors))]
    path = folder / f"{kind}-{len(vectors)}"
    started = time.perf_counter()
    create_index(path, "synthetic", vectors, rows, index_type=kind).close()
    build_seconds = time.perf_counter() - started
    index = SearchIndex.open(path)
    faiss = import_faiss()
    build_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    index.search(queries[:5], K)  # warm-up
    latencies, faiss_latencies, found = [], [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(query[None, :], K)[0]
        latencies.append(time.perf_counter() - started)
        found.append({hit.id for hit in hits})
        started = time.perf_counter()
        index.index.search(query[None, :], K * (index.refine_factor if kind == "ivfpq" else 1))
        faiss_latencies.append(time.perf_counter() - started)
    faiss.omp_set_num_threads(build_threads)
    recall = _recall(found, truth)
    by_nprobe = {str(probes): _recall([{hit.id for hit in hits} for hits in index.search(queries, K, nprobe=probes)],
                                 truth) for probes in NPROBE_SWEEP} if kind != "flat" else {}
    result = {"size": len(vectors), "kind": kind, "factory": index.info["factory"], "build_s": build_seconds,
              "faiss_bytes": (path / "vectors.faiss").stat().st_size,
              "rerank_vectors_bytes": (path / "vectors.npy").stat().st_size if kind == "ivfpq" else 0,
              "rss_growth_bytes": rss_growth(path, vectors.shape[1], mmap=False),
              "rss_growth_mmap_bytes": rss_growth(path, vectors.shape[1], mmap=True),
              "p50_ms": 1000 * float(np.percentile(latencies, 50)),
              "p99_ms": 1000 * float(np.percentile(latencies, 99)),
              "faiss_p50_ms": 1000 * float(np.percentile(faiss_latencies, 50)), "recall_at_10": recall,
              "recall_at_10_by_nprobe": by_nprobe}
    index.close()
    return result


def run(sizes: list[int], dim: int, num_queries: int, threads: int) -> dict[str, Any]:
    from vlmkit.search.faiss_index import import_faiss

    faiss = import_faiss()
    results = []
    with tempfile.TemporaryDirectory(prefix="search-latency-") as temporary:
        for size in sizes:
            vectors = synthetic_embeddings(size, dim, seed=0)
            queries = synthetic_embeddings(num_queries, dim, seed=0, clusters=max(10, int(np.sqrt(size) / 2)))
            truth = exact_top_k(vectors, queries)
            for kind in KINDS:
                results.append(measure(kind, vectors, queries, truth, Path(temporary), threads))
                print(table([results[-1]], header=len(results) == 1), file=sys.stderr, flush=True)
    return {"benchmark": "search_latency", "dim": dim, "queries": num_queries, "k": K, "threads": threads,
            "faiss": faiss.__version__, "machine": platform.processor() or platform.machine(),
            "load_average": os.getloadavg()[0], "results": results}


def table(results: list[dict[str, Any]], header: bool = True) -> str:
    lines = ["| vectors | kind | build s | vectors.faiss MB | re-rank .npy MB | RSS MB (mmap) | p50 ms | p99 ms | "
             "FAISS p50 ms | recall@10 | nprobe 1 / 4 |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines = lines if header else []
    for r in results:
        lines.append(f"| {r['size']:,} | {r['kind']} | {r['build_s']:.1f} | {r['faiss_bytes'] / 2**20:.1f} | "
                     f"{r['rerank_vectors_bytes'] / 2**20:.1f} | {r['rss_growth_bytes'] / 2**20:.1f} "
                     f"({r['rss_growth_mmap_bytes'] / 2**20:.1f}) | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['faiss_p50_ms']:.2f} | {r['recall_at_10']:.3f} | "
                     f"{' / '.join(f'{value:.3f}' for value in r['recall_at_10_by_nprobe'].values()) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated index sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per index")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads while timing queries (1: the "
                                                               "latency of one request); builds use all")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--tiny", action="store_true", help="a few seconds: 2000 vectors of dim 32, 20 queries")
    args = parser.parse_args(argv)
    if args.tiny:
        sizes, dim, queries = [2000], 32, 20
    else:
        sizes, dim, queries = [int(size) for size in args.sizes.split(",") if size.strip()], args.dim, args.queries
    report = run(sizes, dim, queries, args.threads)
    print(json.dumps(report, indent=2) if args.json else table(report["results"]))
    return report


if __name__ == "__main__":
    main()
