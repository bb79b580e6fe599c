"""The ``synth`` command through the in-process CLI (cli.md §3)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tests.conftest import run_cli


def test_synth_writes_files_and_manifest_with_plain_progress(tmp_path: Path) -> None:
    out = tmp_path / "inbox"
    result = run_cli("synth", "--out", str(out), "--count", "120", "--seed", "4", "--invalid-rate", "0.2")
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    # The manifest goes beside the folder, never into it (often a watch folder: it would be an export).
    manifest = json.loads((tmp_path / "inbox.manifest.json").read_text(encoding="utf-8"))
    assert sum(e["records"] for e in manifest["files"]) == 120
    assert {p.name for p in out.iterdir()} == {e["file"] for e in manifest["files"]}
    assert f"manifest {tmp_path / 'inbox.manifest.json'}" in result.stderr
    assert out.stat().st_mode & 0o777 == 0o700
    progress = [line for line in result.stderr.splitlines() if "records (" in line]
    assert progress[-1] == "synth: 120/120 records (100 %)"
    assert 2 <= len(progress) <= 11  # periodic, not one line per file
    assert "quarantined expected" in result.stderr


def test_synth_is_deterministic_through_the_cli(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert run_cli("synth", "--out", str(tmp_path / name), "--count", "60", "--seed", "77").code == 0
    a = sorted((tmp_path / "a").iterdir())
    b = sorted((tmp_path / "b").iterdir())
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))


def test_synth_forces_format_and_encoding(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    result = run_cli("synth", "--out", str(out), "--count", "40", "--format", "csv", "--encoding", "cp949")
    assert result.code == 0, result.stderr
    files = list(out.iterdir())
    assert files and all(p.suffix == ".csv" for p in files)
    for p in files:
        p.read_bytes().decode("cp949")


def test_synth_rejects_bad_arguments(tmp_path: Path) -> None:
    assert run_cli("synth", "--out", str(tmp_path / "x"), "--invalid-rate", "1.5").code == 2
    assert run_cli("synth", "--out", str(tmp_path / "y"), "--count", "-1").code == 2
    assert run_cli("synth", "--out", str(tmp_path / "z"), "--format", "yaml").code == 2
    assert not (tmp_path / "x").exists()


def test_synth_refuses_a_folder_that_already_holds_a_corpus(tmp_path: Path) -> None:
    assert run_cli("synth", "--out", str(tmp_path / "c"), "--count", "5").code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run_cli("synth", "--out", str(tmp_path / "c"), "--count", "5", "--seed", "9")
    assert result.code == 2
    assert "already holds" in result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_synth_manifest_option_chooses_where_the_manifest_goes(tmp_path: Path) -> None:
    out, where = tmp_path / "inbox", tmp_path / "m" / "expected.json"
    assert run_cli("synth", "--out", str(out), "--count", "10", "--manifest", str(where)).code == 0
    manifest = json.loads(where.read_text(encoding="utf-8"))
    assert {p.name for p in out.iterdir()} == {e["file"] for e in manifest["files"]}
    assert not (tmp_path / "inbox.manifest.json").exists()


def test_synth_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    from agent.cli import Environment, main

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=err, environ={}, cwd=str(tmp_path))
    assert main(["synth", "--out", "corpus", "--count", "30"], env) == 0
    assert (tmp_path / "corpus.manifest.json").exists()  # relative --out resolves against the cwd
    assert any((tmp_path / "corpus").iterdir())
    assert "records (" not in err.getvalue()  # no plain progress lines on a terminal
    assert "synth: wrote" in err.getvalue()
