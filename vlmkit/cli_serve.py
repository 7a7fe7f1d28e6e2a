"""``vlmkit serve``: the HTTP API and web page over one model (and optionally a search index)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

DESCRIPTION = """\
Serve a model over HTTP: a web page at /, the JSON API under /v1 (healthz, embed, classify, search, caption,
ask, thumbnail/ID), its OpenAPI description at /openapi.json, and an unauthenticated liveness probe at /healthz.
FastAPI's interactive /docs page is off: it loads its scripts from a CDN, which offline machines cannot reach.
Routes the model cannot serve answer 501 with what to use instead. Needs: pip install 'vlmkit[serve]'."""


def add_commands(commands: Any) -> None:
    from vlmkit.cli_use import MODEL_HELP

    serve = commands.add_parser("serve", help="HTTP API and web page over a model (and a search index)",
                                description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--model", required=True, help=MODEL_HELP)
    serve.add_argument("--index", help="a search index (vlmkit.search) to serve /v1/search and thumbnails from")
    serve.add_argument("--no-mmap", action="store_true",
                       help="read the whole index into memory instead of memory-mapping it (the default: the "
                            "service starts at once and the OS pages in what queries touch)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for all, "
                            "with --api-key)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("VLMKIT_API_KEY"),
                       help="require this key on every /v1 route (Authorization: Bearer KEY or X-API-Key: KEY); "
                            "default: $VLMKIT_API_KEY, which keeps the key out of the process list")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default 10 MB)")
    serve.add_argument("--max-pixels", type=int, help="largest uploaded image in pixels (default: PIL's 89.5 M)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="allow browser calls from this origin, e.g. https://example.org (repeatable; "
                            "default: none, no CORS headers)")
    serve.add_argument("--batch-window-ms", type=float, default=5.0,
                       help="gather concurrent text requests for up to this long into one encode_text call "
                            "(default 5; 0: no batching)")
    serve.add_argument("--max-batch", type=int, default=64, help="most texts in one gathered call")
    serve.add_argument("--threads", type=int, help="PyTorch threads for the model (default: PyTorch's, one per "
                                                   "physical core)")
    serve.add_argument("--expose-paths", action="store_true", help="include file paths in search results")
    serve.add_argument("--device", default="auto", help="auto | cpu | cuda")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="run the model in fp32, or with its weights in bf16 and under bf16 autocast (cosine "
                            "to the fp32 embedding ~0.9999); default auto: bf16 where bf16 matrix products are "
                            "faster than fp32 (GPUs with bf16; on a CPU timed at start-up, as training's "
                            "precision: auto)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (off by default: a log line per request costs CPU under load)")
    serve.set_defaults(func=cmd_serve)


def require_serve_extra() -> None:
    """A one-line ImportError naming the extra to install when the web stack is missing."""
    missing = [name for name, module in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                                         ("python-multipart", "multipart")) if not _importable(module)]
    if missing:
        raise ImportError(f"vlmkit serve needs {', '.join(missing)}: pip install 'vlmkit[serve]'")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(args: argparse.Namespace) -> Any:
    """The app ``vlmkit serve`` runs, from its arguments (loads the model and the index)."""
    require_serve_extra()
    import torch

    from vlmkit.cli_use import load_model
    from vlmkit.data.decode import DEFAULT_MAX_PIXELS
    from vlmkit.serve.app import create_app

    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: give a port between 1 and 65535")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: give at least 1")
    index = None
    if args.index:
        from vlmkit.search import SearchIndex

        index = SearchIndex.open(args.index, mmap=not args.no_mmap)
    model = load_model(args)
    device = getattr(model, "device", None) or torch.device("cpu")
    precision = serving_precision(args.precision, device)
    if precision == "bf16" and isinstance(model, torch.nn.Module):
        # weights stored in bf16 rather than cast by autocast on every call: 1.6x faster for clip-tiny's text tower
        # on one CPU thread (10.5 vs 16.8 ms for 16 captions; cosine to fp32 >= 0.9999)
        model = model.to(torch.bfloat16)
    return create_app(model, index, api_key=args.api_key or None, max_upload_mb=args.max_upload_mb,
                      max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, cors_origins=args.cors_origin,
                      batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, model_name=args.model,
                      expose_paths=args.expose_paths, precision=precision)


def serving_precision(precision: str, device: Any) -> str:
    """fp32 or bf16 for the service; ``auto`` is bf16 where training's ``precision: auto`` would pick bf16-mixed."""
    if precision != "auto":
        return precision
    from vlmkit.train.setup import resolve_precision

    return "bf16" if resolve_precision("auto", device).startswith("bf16") else "fp32"


def cmd_serve(args: argparse.Namespace) -> int:
    app = build_app(args)
    import gc

    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)

    if not args.api_key and not _is_loopback(args.host):
        print(f"vlmkit: warning: serving on {args.host} without an API key: anyone who can reach this port can "
              "use the model (set VLMKIT_API_KEY)", file=sys.stderr)
    print(f"vlmkit: serving {args.model} at http://{args.host}:{args.port}/ (API: /v1, OpenAPI: /openapi.json)",
          file=sys.stderr)
    # The model, torch and the app are millions of long-lived objects: without this, every full collection walks
    # them all and stalls the server for ~100 ms (the p99 of a load test); frozen, they are never scanned again.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0
