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
    assert cli_serve.build_app(parse("--model", "tiny", "--index", "scenes.index", "--no-mmap")) is not None
    assert opened == [{"mmap": False}]
    args = parse("--model", "tiny", "--index", "scenes.index", "--api-key", "k", "--cors-origin",
                 "https://app.example", "--max-upload-mb", "1")
    with TestClient(cli_serve.build_app(args)) as client:
        assert client.get("/v1/healthz").status_code == 401
        health = client.get("/v1/healthz", headers={"X-API-Key": "k"}).json()
        assert health["model"] == "tiny" and health["index"]["count"] == scene_index.count
        assert opened[-1] == {"mmap": True}  # memory-mapped by default
        big = client.post("/v1/embed", content=b"x" * (2 * 2**20), headers={"content-type": "application/json"})
        assert big.status_code == 413


def test_cmd_serve_runs_uvicorn_without_access_log_unless_asked(clip_model, monkeypatch):
    import uvicorn

    monkeypatch.setattr("vlmkit.cli_use.load_model", lambda args: clip_model)
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    assert cli_serve.cmd_serve(parse("--model", "tiny", "--port", "8123")) == 0
    assert cli_serve.cmd_serve(parse("--model", "tiny", "--access-log")) == 0
    assert calls[0] == {"host": "127.0.0.1", "port": 8123, "log_level": "info", "access_log": False}
    assert calls[1]["access_log"] is True
