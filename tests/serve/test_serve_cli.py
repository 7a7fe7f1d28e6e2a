"""``vlmkit serve``: its help, its one-line errors, the API key from the environment, and the app it builds
(a real ``vlmkit serve`` process is exercised by the benchmark test in test_load.py)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from vlmkit import cli, cli_serve


def parse(*arguments: str):
    return cli.build_parser().parse_args(["serve", *arguments])


def test_help_names_the_routes_and_why_docs_is_off(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "/openapi.json" in text and "CDN" in text and "--cors-origin" in text and "VLMKIT_API_KEY" in text
    assert "vlmkit serve --model" in cli.EPILOG


def test_defaults_are_local_and_the_key_comes_from_the_environment(monkeypatch):
    args = parse("--model", "m")
    assert (args.host, args.port, args.max_upload_mb, args.cors_origin, args.batch_window_ms) == (
        "127.0.0.1", 8000, 10.0, [], 5.0)
    monkeypatch.setenv("VLMKIT_API_KEY", "from-env")
    assert parse("--model", "m").api_key == "from-env"
    assert parse("--model", "m", "--api-key", "given").api_key == "given"


@pytest.mark.parametrize("arguments,message", [
    (["--model", "/no/such/model"], "no model at"),
    (["--model", "m", "--port", "70000"], "--port 70000"),
    (["--model", "m", "--threads", "0"], "--threads 0"),
])
def test_bad_arguments_are_one_line_errors(capsys, arguments, message):
    assert cli.main(["serve", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and error.count("\n") == 1


def test_a_missing_web_stack_names_the_extra(monkeypatch):
    monkeypatch.setattr(cli_serve, "_importable", lambda module: module != "uvicorn")
    with pytest.raises(ImportError, match=r"needs uvicorn: pip install 'vlmkit\[serve\]'"):
        cli_serve.require_serve_extra()


def test_loopback_hosts():
    assert cli_serve._is_loopback("127.0.0.1") and cli_serve._is_loopback("localhost")
    assert cli_serve._is_loopback("::1")
    assert not cli_serve._is_loopback("0.0.0.0") and not cli_serve._is_loopback("example.org")


def test_build_app_serves_the_model_and_index(clip_model, scene_index, monkeypatch):
    monkeypatch.setattr("vlmkit.cli_use.load_model", lambda args: clip_model)
    opened = []
    monkeypatch.setattr("vlmkit.search.SearchIndex.open",
                        classmethod(lambda cls, path, **kw: opened.append(kw) or scene_index))
    # fp32: bf16 (auto's choice on CPUs with bf16 units) would convert the session's shared model in place
    assert cli_serve.build_app(parse("--model", "tiny", "--index", "scenes.index", "--no-mmap",
                                     "--precision", "fp32")) is not None
    assert opened == [{"mmap": False}]
    args = parse("--model", "tiny", "--index", "scenes.index", "--api-key", "k", "--cors-origin",
                 "https://app.example", "--max-upload-mb", "1", "--precision", "fp32")
    with TestClient(cli_serve.build_app(args)) as client:
        assert client.get("/v1/healthz").status_code == 401
        health = client.get("/v1/healthz", headers={"X-API-Key": "k"}).json()
        assert health["model"] == "tiny" and health["index"]["count"] == scene_index.count
        assert opened[-1] == {"mmap": True}  # memory-mapped by default
        big = client.post("/v1/embed", content=b"x" * (2 * 2**20), headers={"content-type": "application/json"})
        assert big.status_code == 413


def test_cmd_serve_runs_uvicorn_without_access_log_unless_asked(clip_model, monkeypatch):
    import uvicorn

    import gc

    import torch

    monkeypatch.setattr("vlmkit.cli_use.load_model", lambda args: clip_model)
    calls, threads, frozen = [], [], []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # not this test process's threads
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    assert cli_serve.cmd_serve(parse("--model", "tiny", "--port", "8123", "--precision", "fp32")) == 0
    assert cli_serve.cmd_serve(parse("--model", "tiny", "--access-log", "--threads", "2",
                                     "--precision", "fp32")) == 0
    assert calls[0] == {"host": "127.0.0.1", "port": 8123, "log_level": "info", "access_log": False}
    assert calls[1]["access_log"] is True
    assert threads == [2] and frozen == [True, True]  # PyTorch's threads unless --threads


def test_auto_precision_follows_training(monkeypatch):
    import torch

    cpu = torch.device("cpu")
    assert cli_serve.serving_precision("fp32", cpu) == "fp32" and cli_serve.serving_precision("bf16", cpu) == "bf16"
    for training, serving in (("bf16-mixed", "bf16"), ("fp32", "fp32")):
        monkeypatch.setattr("vlmkit.train.setup.resolve_precision", lambda precision, device, answer=training: answer)
        assert cli_serve.serving_precision("auto", cpu) == serving
    assert parse("--model", "m").precision == "auto"


def test_auto_precision_serves_bf16_weights_close_to_fp32(clip_model, monkeypatch):
    import copy

    import numpy as np
    import torch
    from fastapi.testclient import TestClient

    monkeypatch.setattr("vlmkit.cli_use.load_model", lambda args: copy.deepcopy(clip_model))
    monkeypatch.setattr("vlmkit.train.setup.resolve_precision", lambda precision, device: "bf16-mixed")
    app = cli_serve.build_app(parse("--model", "tiny"))
    service = app.state.service
    assert service.precision == "bf16" and service.model.dtype == torch.bfloat16
    texts = ["a red circle", "two green triangles"]
    with TestClient(app) as client:
        embedded = np.array(client.post("/v1/embed", json={"texts": texts}).json()["embeddings"])
    exact = clip_model.encode_text(texts).numpy()  # the session's fp32 model, untouched
    assert clip_model.dtype == torch.float32
    cosines = (embedded * exact).sum(1) / np.linalg.norm(embedded, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(embedded, exact)
    monkeypatch.setattr("vlmkit.train.setup.resolve_precision", lambda precision, device: "fp32")
    assert cli_serve.build_app(parse("--model", "tiny")).state.service.model.dtype == torch.float32


def test_bf16_serving_covers_images_and_generation(clip_model, generative_model, scenes, monkeypatch):
    import copy

    from fastapi.testclient import TestClient

    monkeypatch.setattr("vlmkit.train.setup.resolve_precision", lambda precision, device: "bf16-mixed")
    png = sorted((scenes / "images").rglob("*.png"))[0].read_bytes()
    for model, route, data in ((clip_model, "/v1/classify", {"labels": "red circle,blue square"}),
                               (clip_model, "/v1/embed", {}),
                               (generative_model, "/v1/caption", {"max_new_tokens": "4"}),
                               (generative_model, "/v1/ask", {"question": "what color?"})):
        monkeypatch.setattr("vlmkit.cli_use.load_model", lambda args, m=model: copy.deepcopy(m))
        with TestClient(cli_serve.build_app(parse("--model", "tiny"))) as client:
            response = client.post(route, files={"image": ("a.png", png, "image/png")}, data=data)
        assert response.status_code == 200, (route, response.text)
