"""``check``, ``convert`` and ``schema`` through the CLI (cli.md §3, issue 3 acceptance)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

from tests.conftest import EXAMPLES_DIR, load_example


def test_every_spec_example_checks_clean(cli) -> None:
    files = sorted(str(p) for p in EXAMPLES_DIR.glob("*.json"))
    assert len(files) == 4
    result = cli("check", *files)
    assert result.code == 0, result.stdout + result.stderr
    assert not re.search(r"\bR-\d{3}\b", result.stdout)


def test_one_bad_record_among_a_thousand_names_file_record_and_rule(cli, tmp_path: Path) -> None:
    base = load_example("pharmacy_receipt")
    docs = []
    for i in range(1000):
        doc = json.loads(json.dumps(base))
        doc["document_no"] = f"P202503-{i:06d}"
        docs.append(doc)
    docs[637]["total_charge"] += 1000  # breaks RP-1 only
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    result = cli("check", str(path))
    assert result.code == 3
    errors = [line for line in result.stdout.splitlines() if re.search(r": R-\d{3} ", line)]
    assert errors == [line for line in errors if line.startswith(f"{path}:637: R-401")]
    assert len(errors) == 1
    assert "홍길동" not in result.stdout + result.stderr


def test_check_json_report(cli, tmp_path: Path) -> None:
    doc = load_example("receipt")
    doc["patient"]["rrn"] = "900101-1000001"  # hyphen: R-032 in the standard profile
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    result = cli("check", "--json", str(path))
    assert result.code == 3
    report = result.json()
    assert report["ok"] is False
    rules = {p["rule"] for p in report["files"][0]["problems"]}
    assert "R-032" in rules
    assert "900101" not in result.stdout


def test_undecodable_file_is_r002_and_exit_3(cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"a": "\xff\xfe\xfa"}')
    result = cli("check", str(path))
    assert result.code == 3
    assert "R-002" in result.stdout


def test_convert_prints_canonical_standard_form(cli) -> None:
    result = cli("convert", str(EXAMPLES_DIR / "receipt.json"))
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["document_no"] == "202503-000123"
    assert "source" not in doc and "validation" not in doc


def test_convert_invalid_input_exits_3_with_nothing_on_stdout(cli, tmp_path: Path) -> None:
    doc = load_example("receipt")
    doc["total_charge"] = 1
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    result = cli("convert", str(path))
    assert result.code == 3 and result.stdout == ""
    assert "R-109" in result.stderr


def test_schema_validates_every_example(cli) -> None:
    for name in ("receipt", "receipt_detail", "prescription", "pharmacy_receipt"):
        result = cli("schema", name)
        assert result.code == 0
        schema = result.json()
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        example = json.loads((EXAMPLES_DIR / f"{name}.json").read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(schema).validate(example)
    combined = cli("schema").json()
    for path in EXAMPLES_DIR.glob("*.json"):
        jsonschema.Draft202012Validator(combined).validate(json.loads(path.read_text(encoding="utf-8")))
    assert cli("schema", "diagnosis").code == 2


def test_convert_to_fhir_renders_a_valid_r4_document_bundle(cli) -> None:
    from fhir.resources.R4B.bundle import Bundle

    result = cli("convert", "--to", "fhir", str(EXAMPLES_DIR / "prescription.json"))
    assert result.code == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["type"] == "document"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
    Bundle.model_validate(bundle)
    assert "9001011000001" not in result.stdout


def test_profile_file_paths_resolve_from_the_command_line_and_from_the_config(cli, installation, tmp_path):
    """``check --profile FILE.toml`` finds a relative file against the working directory, then the
    profile folders (the shipped ones too); a ``[[watch]] profile`` file path in the config resolves
    against the config's folder (cli.md §4), whatever the working directory."""
    import shutil

    from agent.commands._common import load_named_profile
    from agent.config import load_config

    repo = Path(__file__).resolve().parents[2]
    sample = repo / "config" / "profiles" / "samples" / "vendor_a_pharmacy.csv"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("check", "--profile", "vendor_a_csv.toml", str(sample), cwd=elsewhere)
    assert result.code == 0, result.stderr

    shutil.copy(repo / "config" / "profiles" / "vendor_a_csv.toml", installation / "site_a.toml")
    config = load_config(installation / "agent.toml")
    assert load_named_profile("site_a.toml", config).name == "vendor_a_csv"
    assert load_named_profile("./site_a.toml", config, cwd=str(elsewhere)).name == "vendor_a_csv"


def test_a_file_argument_that_is_not_a_file_is_a_usage_error(cli, tmp_path) -> None:
    """cli.md §2: exit 2 for a bad argument; 3 is only for records that failed validation. The
    other files are still checked and reported."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps(load_example("receipt")), encoding="utf-8")
    result = cli("check", str(tmp_path / "missing.json"), str(good), "--json")
    assert result.code == 2
    files = {f["file"]: f for f in result.json()["files"]}
    assert files[str(good)]["ok"] is True and files[str(tmp_path / "missing.json")]["ok"] is False
    assert cli("check", str(tmp_path)).code == 2  # a directory is not a FILE either
    assert "Traceback" not in result.stderr
