"""The fuzz harness bodies run in the normal test suite on random and mutated inputs, so a
harness that stops working (or a reader that starts raising) fails `make test`, not only `make fuzz`."""

from __future__ import annotations

import importlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.run_all import HARNESSES


def harness(name: str):  # type: ignore[no-untyped-def]
    pytest.importorskip("atheris")
    return importlib.import_module(f"tests.fuzz.fuzz_{name}").test_one_input


def test_bundle_seeds_are_valid_bundles(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The mutations start from bundles that read: the fuzzer explores past the archive layer.
    from agent.ops.provision import read_bundle
    from tests.fuzz.run_all import bundle_seeds

    for n, data in enumerate(bundle_seeds()):
        path = tmp_path / f"b{n}{'.zip' if data[:2] == b'PK' else '.tar.gz'}"
        path.write_bytes(data)
        assert read_bundle(path).install_dir.name == "silson-agent"


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_survives_random_bytes(name: str) -> None:
    body = harness(name)
    rng = random.Random(name)  # deterministic per harness
    for _ in range(300):
        body(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))))


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_survives_mutated_seeds(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.fuzz.run_all import seed_corpus

    body = harness(name)
    seed_corpus(name, tmp_path)
    seeds = [p.read_bytes() for p in sorted(tmp_path.iterdir())]
    assert seeds
    rng = random.Random(f"mutate-{name}")
    for _ in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 8)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[pos : pos + rng.randrange(1, 40)]
            elif op == 1:
                data[pos:pos] = rng.choice(
                    [b"<", b">", b'"', b",", b"\n", b"{", b"]", b"&", b"\xff", b"\x00"]
                )
            elif data:
                data[min(pos, len(data) - 1)] = rng.getrandbits(8)
        body(bytes(data))


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200), name=st.sampled_from(HARNESSES))
def test_harness_survives_hypothesis_inputs(data: bytes, name: str) -> None:
    harness(name)(data)


def test_harness_detects_a_contract_break(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.fuzz.harness_common as common
    from agent.formats.result import ReadResult

    monkeypatch.setattr(common, "read_export", lambda *a, **k: ReadResult(format="json", encoding=None))
    with pytest.raises(AssertionError):
        common.check_read(b"", "x.json")


def test_relay_request_harness_detects_an_echoing_pointer(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.fuzz.harness_common as common
    from agent.api.problems import FieldError, ProblemError

    def echoing(body):  # type: ignore[no-untyped-def]
        raise ProblemError("validation-failed", errors=[FieldError("/patient/" + "x" * 3, "type")])

    monkeypatch.setattr(common, "validate_search", echoing)
    with pytest.raises(AssertionError):
        common.check_relay_request(b'{"patient": {}}')
