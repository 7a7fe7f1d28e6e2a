"""``vlmkit index build|add|remove|search|info`` through vlmkit.cli.main, including the one-line user errors."""
from __future__ import annotations

import json
import shutil

import pytest

from vlmkit.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, scenes, clip_folder):
    out = tmp_path_factory.mktemp("cli") / "scenes.index"
    assert main(["index", "build", "--model", str(clip_folder), "--images", str(scenes / "captions.csv"),
                 "--out", str(out), "--no-progress", "--index-type", "flat"]) == 0
    return out


def test_build_info_and_search_by_text_and_image(cli_index, scenes, capsys):
    code, out, _ = run(capsys, "index", "info", str(cli_index), "--json")
    info = json.loads(out)
    assert code == 0 and info["count"] == 24 and info["kind"] == "flat" and info["dim"] == 16
    code, out, _ = run(capsys, "index", "info", str(cli_index))
    assert code == 0 and "model_spec" in out and "vectors.faiss" in out
    code, out, _ = run(capsys, "index", "search", str(cli_index), "a red circle", "-k", "3", "--json")
    result = json.loads(out)
    assert code == 0 and result["query"] == "a red circle" and len(result["hits"]) == 3
    assert set(result["hits"][0]) == {"id", "score", "path", "key", "caption", "width", "height", "sha256"}
    image = sorted((scenes / "images").glob("*.png"))[3]
    code, out, _ = run(capsys, "index", "search", str(cli_index), "--image", str(image), "-k", "2")
    assert code == 0 and out.splitlines()[0].startswith("  1. 1.0000") and str(image) in out.splitlines()[0]
    code, out, _ = run(capsys, "index", "search", str(cli_index), "star", "--where", "caption~star", "--json",
                       "--collapse-duplicates")
    assert code == 0 and all("star" in hit["caption"] for hit in json.loads(out)["hits"])
    code, out, _ = run(capsys, "index", "search", str(cli_index), "x", "--where", "caption=no such caption")
    assert code == 0 and "no results" in out


def test_add_remove_and_model_override(tmp_path, cli_index, scenes, clip_folder, capsys):
    index = shutil.copytree(cli_index, tmp_path / "copy.index")
    code, out, _ = run(capsys, "index", "remove", str(index), "--ids", "0,1", "5")
    assert code == 0 and "removed 3 items; 21 remain" in out
    code, out, _ = run(capsys, "index", "remove", str(index), "--ids", "0")
    assert code == 0 and "removed 0 items" in out and "not in the index" in out
    first = sorted((scenes / "images").glob("*.png"))[0]
    code, out, _ = run(capsys, "index", "add", str(index), "--images", str(first), "--no-progress")
    assert code == 0 and "added 1 images" in out and "now holds 22" in out
    other = shutil.copytree(clip_folder, tmp_path / "other")
    code, out, err = run(capsys, "index", "search", str(index), "circle", "--model", str(other), "-k", "1")
    assert code == 0 and "warning: using --model" in err


@pytest.mark.parametrize("argv, message", [
    (["index", "search", "{index}", "x", "--where", "colour=red"], "unknown filter field 'colour'"),
    (["index", "search", "{index}"], "give a text QUERY or --image PATH"),
    (["index", "search", "{index}", "x", "-k", "0"], "-k must be at least 1"),
    (["index", "search", "{tmp}", "x"], "is not a search index"),
    (["index", "remove", "{index}", "--ids", "one"], "--ids takes integer ids"),
    (["index", "remove", "{index}"], "say what to remove"),
    (["index", "build", "--model", "{model}", "--images", "{tmp}/none.csv", "--out", "{tmp}/i"], "no such"),
    (["index", "build", "--model", "{model}", "--images", "{images}", "--out", "{index}"], "already a search index"),
    (["index", "build", "--model", "{model}", "--images", "{images}", "--out", "{tmp}/j", "--index-type", "XYZ"],
     "neither one of auto, flat, ivf, ivfpq"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, cli_index, scenes, clip_folder, tmp_path,
                                                   capsys):
    values = {"index": str(cli_index), "tmp": str(tmp_path), "model": str(clip_folder),
              "images": str(scenes / "images")}
    code, _, err = run(capsys, *[part.format(**values) for part in argv], *(
        ["--no-progress"] if argv[1] == "build" else []))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
