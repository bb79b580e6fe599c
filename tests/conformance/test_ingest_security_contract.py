"""security.md acceptance criteria about ingest and storage: S-08, S-09, S-21, S-24…S-30, S-36.

Real daemon, real files, synthetic data only (``synth`` and the spec examples).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import stat
import struct
import time
from pathlib import Path

import pytest

from tests.conformance._ingest_support import (
    Daemon,
    Install,
    cli,
    counters,
    example,
    fresh_receipt,
    jdump,
    scan_bytes,
    scan_phi,
    to_xml,
    wait_for,
)

CANARY = "CANARY-4E1F"


def _collect_phi(docs: list[dict]) -> tuple[set[str], set[str]]:
    names: set[str] = set()
    rrns: set[str] = set()
    for d in docs:
        p = d.get("patient", {})
        if p.get("name"):
            names.add(p["name"])
        if p.get("rrn"):
            rrns.add(p["rrn"])
        if p.get("rrn_masked"):
            rrns.add(p["rrn_masked"][:7] + "000000")
        for k in ("prescriber_name", "pharmacist_name"):
            if d.get(k):
                names.add(d[k])
        if d.get("prescriber", {}).get("name"):
            names.add(d["prescriber"]["name"])
        if d.get("institution", {}).get("representative"):
            names.add(d["institution"]["representative"])
    return names, rrns


def _decode(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp949")


_CSV_PHI = {
    "patient.name": "n",
    "patient.rrn": "r",
    "patient.rrn_masked": "m",
    "prescriber.name": "n",
    "prescriber_name": "n",
    "pharmacist_name": "n",
    "institution.representative": "n",
}


def _phi_of_file(path: Path) -> tuple[set[str], set[str]]:
    """Names and RRNs in one synthetic export, read independently of the agent."""
    import csv
    import io
    import xml.etree.ElementTree as ET

    text = _decode(path.read_bytes())
    if path.suffix == ".json":
        data = json.loads(text)
        return _collect_phi(data if isinstance(data, list) else [data])
    if path.suffix in (".jsonl", ".ndjson"):
        return _collect_phi([json.loads(x) for x in text.splitlines() if x.strip()])
    names: set[str] = set()
    rrns: set[str] = set()
    if path.suffix == ".csv":
        for row in csv.DictReader(io.StringIO(text)):
            for col, kind in _CSV_PHI.items():
                v = (row.get(col) or "").strip()
                if v:
                    (rrns if kind in "rm" else names).add(v[:7] + "000000" if kind == "m" else v)
        return names, rrns
    if path.suffix == ".xml":
        if text.startswith("<?xml"):
            text = text.split("?>", 1)[1]
        root = ET.fromstring(text)
        for el in root.iter():
            v = (el.text or "").strip()
            if not v:
                continue
            if el.tag in ("prescriber_name", "pharmacist_name", "representative"):
                names.add(v)
            elif el.tag == "rrn":
                rrns.add(v)
            elif el.tag == "rrn_masked":
                rrns.add(v[:7] + "000000")
        for parent in ("patient", "prescriber"):
            for el in root.iter(parent):
                n = el.find("name")
                if n is not None and (n.text or "").strip():
                    names.add(n.text.strip())
        return names, rrns
    raise AssertionError(path)


def _shared_dir(tmp_path_factory) -> Path:
    """A folder shared by the xdist workers of this session (so the corpus is ingested once)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    import fcntl

    shared = _shared_dir(tmp_path_factory)
    with open(shared / "s08.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / "s08.json"
        if done.exists():
            info = json.loads(done.read_text(encoding="utf-8"))
        else:
            info = _build_loaded(shared / "s08")
            done.write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return {
        "inst": Install(Path(info["root"])),
        "phi": (set(info["names"]), set(info["rrns"])),
        "originals": [Path(x) for x in info["originals"]],
        "backup": Path(info["backup"]),
        "purge_code": info["purge_code"],
        "purge_err": info["purge_err"],
    }


def _build_loaded(base: Path) -> dict:
    """1,000 synthetic documents (all formats, UTF-8 and CP949) + the spec examples carrying the canary,
    a file named after the patient, a quarantined file with PHI, a backup written into data_dir, and a
    SIGKILL + restart. Returns (install, needles, originals folder, backup path)."""
    base.mkdir()
    inst = Install.create(base)
    corpus = base / "corpus"
    r = cli("synth", "--out", corpus, "--count", "1000", "--seed", "42", cwd=base, timeout=300)
    assert r.returncode == 0, r.stderr
    files = sorted(p for p in corpus.iterdir() if p.name != "manifest.json")
    names: set[str] = set()
    rrns: set[str] = set()
    for p in files:
        n, r_ = _phi_of_file(p)
        names |= n
        rrns |= r_
    assert len(rrns) > 50 and len(names) > 20
    # the examples (홍길동 …) with the canary marker in free text, one under the patient's name
    rc = example("receipt")
    rc["remarks"] = f"비고 {CANARY}"
    rx = example("prescription")
    rx["dispensing_notes"] = f"조제 참고 {CANARY}"
    ph = example("pharmacy_receipt")
    ph["remarks"] = CANARY
    extra = base / "extra"
    extra.mkdir()
    (extra / "홍길동_영수증.json").write_bytes(jdump(rc))
    (extra / "rx.jsonl").write_bytes(json.dumps(rx, ensure_ascii=False).encode("cp949") + b"\n")
    (extra / "ph.xml").write_bytes(to_xml([ph]).encode("utf-8"))
    bad = fresh_receipt("BAD-000001", name="나쁜환자", rrn="8502021000007")
    bad["remarks"] = CANARY
    bad["total_charge"] = 1
    (extra / "bad.json").write_bytes(jdump(bad))
    n, r_ = _collect_phi([rc, rx, ph, bad])
    names |= n
    rrns |= r_
    d = Daemon(inst).start()
    try:
        for p in files + sorted(extra.iterdir()):
            inst.drop(p.name, p.read_bytes())
        wait_for(
            lambda: not any(x for x in inst.inbox.iterdir() if not x.name.endswith(".tmp")),
            120,
            interval=0.5,
            what="inbox drained",
        )
        wait_for(lambda: inst.status()["ingest"]["files_quarantined"] >= 1, 30, what="bad file quarantined")
        # a backup written into data_dir while running
        backup = inst.data_dir / "s08.bak"
        rb = inst.run_cli("backup", "--out", backup, "--reason", "S-08")
        assert rb.returncode == 0, rb.stderr
        d.kill()  # SIGKILL
    finally:
        if d.alive():
            d.kill()
    d = Daemon(inst).start()
    time.sleep(1.0)
    rp = inst.run_cli("purge")
    assert d.stop() == 0
    return {
        "root": str(inst.root),
        "names": sorted(names),
        "rrns": sorted(rrns),
        "originals": [str(corpus), str(extra)],
        "backup": str(backup),
        "purge_code": rp.returncode,
        "purge_err": rp.stderr,
    }


def test_s08_corpus_was_ingested(loaded):
    c = counters(loaded["inst"].status())
    assert c["versions"] >= 800, c
    assert c["quarantined"] >= 1


def test_s08_control_scan_finds_phi_in_originals(loaded):
    hits = scan_phi(loaded["originals"], *loaded["phi"], {"canary": CANARY.encode()})
    assert any(k.startswith("rrn:") for k in hits)
    assert any(k.startswith("name-utf-8:") for k in hits)
    assert any(k.startswith("name-cp949:") for k in hits)
    assert "canary" in hits
    assert "name-utf-8:홍길동" in hits


def test_s08_no_phi_in_data_dir_or_log_dir(loaded):
    inst = loaded["inst"]
    hits = scan_phi([inst.data_dir, inst.log_dir], *loaded["phi"])
    assert not hits, {k: v[:3] for k, v in list(hits.items())[:10]}


def test_s09_no_canary_in_data_dir_or_log_dir(loaded):
    inst = loaded["inst"]
    assert not scan_bytes([inst.data_dir, inst.log_dir], {"canary": CANARY.encode()})


def test_s29_patient_name_in_file_name_leaks_nowhere(loaded):
    inst = loaded["inst"]
    for root in (inst.data_dir, inst.log_dir):
        for dirpath, dirs, files in os.walk(root):
            for n in dirs + files:
                assert "홍길동" not in n, os.path.join(dirpath, n)
    assert not scan_bytes(
        [inst.data_dir, inst.log_dir],
        {"n1": "홍길동".encode(), "n2": "홍길동_영수증".encode(), "n3": "홍길동".encode("cp949")},
    )


def test_s21_modes_after_ingest_backup_purge(loaded):
    inst = loaded["inst"]
    bad = []
    for dirpath, dirs, files in os.walk(inst.data_dir):
        for n in dirs:
            m = stat.S_IMODE(os.stat(os.path.join(dirpath, n)).st_mode)
            if m != 0o700:
                bad.append((os.path.join(dirpath, n), oct(m)))
        for n in files:
            m = stat.S_IMODE(os.stat(os.path.join(dirpath, n)).st_mode)
            if m != 0o600:
                bad.append((os.path.join(dirpath, n), oct(m)))
    assert stat.S_IMODE(inst.data_dir.stat().st_mode) == 0o700
    assert not bad, bad


def test_logs_modes(loaded):
    """security.md §8: log files 0640, log directory 0750 (§10: umask 077 except logs)."""
    inst = loaded["inst"]
    assert stat.S_IMODE(inst.log_dir.stat().st_mode) in (0o750, 0o700)
    files = [p for p in inst.log_dir.rglob("*") if p.is_file()]
    assert files, "the daemon writes structured logs into log_dir"
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) in (0o640, 0o600), (p, oct(stat.S_IMODE(p.stat().st_mode)))


def test_logs_are_json_lines_naming_files_by_id(loaded):
    inst = loaded["inst"]
    for p in inst.log_dir.rglob("*"):
        if p.is_file() and p.stat().st_size:
            for line in p.read_text(encoding="utf-8").splitlines():
                json.loads(line)
            assert "bad.json" not in p.read_text(encoding="utf-8")


def test_s36_backup_has_no_phi_and_verifies(loaded, tmp_path):
    inst, backup = loaded["inst"], loaded["backup"]
    assert backup.is_file()
    assert not scan_phi([backup], *loaded["phi"], {"canary": CANARY.encode()})
    assert backup.stat().st_size > 0
    r = inst.run_cli("backup", "verify", backup)
    assert r.returncode == 0, r.stderr
    data = bytearray(backup.read_bytes())
    for pos in (len(data) // 2, len(data) - 1, 64):
        tampered = bytearray(data)
        tampered[pos] ^= 0x01
        t = tmp_path / f"t{pos}.bak"
        t.write_bytes(bytes(tampered))
        r = inst.run_cli("backup", "verify", t)
        assert r.returncode == 6, (pos, r.returncode, r.stderr)


def test_store_verify_after_sigkill(loaded):
    r = loaded["inst"].run_cli("store", "verify")
    assert r.returncode == 0, r.stderr


def test_purge_ran(loaded):
    assert loaded["purge_code"] == 0, loaded["purge_err"]


# =========================================================================== hostile inputs


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    inst = Install.create(tmp_path_factory.mktemp("hostile"))
    d = Daemon(inst).start()
    yield d
    d.stop()


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _quarantined_with(d: Daemon, rule: str, before: int) -> list[dict]:
    entries = d.inst.quarantine()
    return [e for e in entries[before:] if rule in json.dumps(e)] if len(entries) > before else []


@pytest.mark.parametrize("kind", ["xxe", "billion-laughs"])
def test_s24_unsafe_xml_quarantined_r003_fast(hostile, tmp_path, kind):
    canary_file = tmp_path / "canary.txt"
    secret = f"SECRET-{kind}-7Q2Z"
    canary_file.write_text(secret)
    body = to_xml([fresh_receipt(f"X-{kind}")], declaration="").split("\n", 1)[1]
    if kind == "xxe":
        xml = (
            f'<?xml version="1.0"?>\n<!DOCTYPE documents [<!ENTITY xxe SYSTEM "file://{canary_file}">]>\n'
            "<documents>\n"
            + body.replace("<remarks>", "").replace("</document>", "<remarks>&xxe;</remarks></document>", 1)
        )
    else:
        ents = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
        xml = (
            '<?xml version="1.0"?>\n<!DOCTYPE documents ['
            + "".join(ents)
            + "]>\n<documents>\n"
            + body.replace("</document>", "<remarks>&lol9;</remarks></document>", 1)
        )
    n0 = len(hostile.inst.quarantine())
    t0 = time.monotonic()
    path = hostile.inst.drop(f"{kind}.xml", xml)
    wait_for(lambda: not path.exists(), 10, interval=0.02, what="unsafe xml taken")
    elapsed = time.monotonic() - t0
    entries = wait_for(lambda: _quarantined_with(hostile, "R-003", n0), 10, what="R-003 entry")
    assert entries
    assert elapsed < 2.0, f"quarantined after {elapsed:.2f}s"
    assert _hwm_kib(hostile.proc.pid) < 200 * 1024
    assert not scan_bytes([hostile.inst.data_dir, hostile.inst.log_dir], {"canary": secret.encode()})


def test_s27_invalid_in_both_encodings_quarantined_r002(hostile):
    data = json.dumps(fresh_receipt("ENC-000001"), ensure_ascii=False).encode("cp949")
    data = data.replace("예시로 1".encode("cp949"), b"\xff\x80\xfe 1")
    n0 = len(hostile.inst.quarantine())
    delta = hostile.ingest("enc.json", data)
    assert delta["quarantined"] == 1 and delta["versions"] == 0
    assert _quarantined_with(hostile, "R-002", n0)


def test_s27_accepted_cp949_text_has_no_replacement_char(hostile, tmp_path):
    doc = fresh_receipt("ENC-000002", name="똠방각하")
    raw = json.dumps(doc, ensure_ascii=False).encode("cp949")
    delta = hostile.ingest("cp.json", raw)
    assert delta["accepted"] == 1
    p = tmp_path / "cp.json"
    p.write_bytes(raw)
    r = cli("convert", p, cwd=tmp_path)
    assert r.returncode == 0
    assert "\ufffd" not in r.stdout and "똠방각하" in r.stdout


def test_s30_json_nested_10000_levels(hostile):
    n0 = len(hostile.inst.quarantine())
    delta = hostile.ingest("deep.json", b"[" * 10000 + b"]" * 10000)
    assert delta["quarantined"] == 1
    assert _quarantined_with(hostile, "R-004", n0)
    assert hostile.alive()
    logs = b"".join(p.read_bytes() for p in hostile.inst.log_dir.rglob("*") if p.is_file())
    assert b"RecursionError" not in logs and b"Traceback" not in logs
    assert "RecursionError" not in hostile.stderr()
    # still working
    assert hostile.ingest("after.json", jdump(fresh_receipt("AFTER-000001")))["accepted"] == 1


def test_s30_deep_xml(hostile):
    n0 = len(hostile.inst.quarantine())
    xml = (
        "<documents>" + '<document type="receipt">' + "<a>" * 5000 + "</a>" * 5000 + "</document></documents>"
    )
    delta = hostile.ingest("deep.xml", xml)
    assert delta["quarantined"] == 1
    assert _quarantined_with(hostile, "R-004", n0)
    assert hostile.alive()


def test_control_characters_in_file_name_quarantined(hostile):
    """security.md §9: names with control characters or invalid encoding are quarantined."""
    n0 = len(hostile.inst.quarantine())
    before = counters(hostile.inst.status())
    name = b"ctl\x01name.json"
    tmp = os.path.join(os.fsencode(hostile.inst.inbox), b".ctl.tmp")
    with open(tmp, "wb") as f:
        f.write(jdump(fresh_receipt("CTL-000001")))
    final = os.path.join(os.fsencode(hostile.inst.inbox), name)
    os.replace(tmp, final)
    wait_for(lambda: len(hostile.inst.quarantine()) > n0, 15, what="quarantine for a control-character name")
    hostile.forget()
    after = counters(hostile.inst.status())
    assert after["versions"] == before["versions"]


def test_invalid_encoding_file_name_quarantined(hostile):
    n0 = len(hostile.inst.quarantine())
    before = counters(hostile.inst.status())
    tmp = os.path.join(os.fsencode(hostile.inst.inbox), b".bad.tmp")
    with open(tmp, "wb") as f:
        f.write(jdump(fresh_receipt("NAME-000001")))
    os.replace(tmp, os.path.join(os.fsencode(hostile.inst.inbox), b"\xff\xfe.json"))
    wait_for(lambda: len(hostile.inst.quarantine()) > n0, 6, what="quarantine for an undecodable name")
    hostile.forget()
    assert counters(hostile.inst.status())["versions"] == before["versions"]


# --------------------------------------------------------------------------- S-25 (inotify access trace)


IN_ACCESS = 0x00000001
IN_NONBLOCK = 0o4000


def _inotify():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK)
    if fd < 0:
        pytest.skip("inotify unavailable")
    return libc, fd


def _drain(fd: int) -> list[int]:
    masks = []
    while True:
        try:
            buf = os.read(fd, 65536)
        except BlockingIOError:
            return masks
        i = 0
        while i < len(buf):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
            masks.append(mask)
            i += 16 + length


def test_s25_65mib_file_r001_without_being_read(tmp_path):
    inst = Install.create(tmp_path)
    libc, fd = _inotify()
    try:
        with Daemon(inst) as d:
            tmp = inst.inbox / "huge.json.tmp"
            with open(tmp, "wb") as f:
                f.write(b'[{"a": "')
                f.truncate(65 * 1024 * 1024)  # sparse; nothing readable past the first bytes matters
            wd = libc.inotify_add_watch(fd, os.fsencode(tmp), IN_ACCESS)
            assert wd >= 0
            os.replace(tmp, inst.inbox / "huge.json")
            entries = wait_for(inst.quarantine, 20, what="R-001 entry")
            assert "R-001" in json.dumps(entries)
            assert (inst.inbox / "huge.json").exists(), "a too-large file is left in place"
            time.sleep(2.5)  # a few more scans
            assert len(inst.quarantine()) == 1
            assert not [m for m in _drain(fd) if m & IN_ACCESS], "the file content was read"
            assert counters(inst.status())["quarantined"] == 1
            d.stop()
    finally:
        os.close(fd)


@pytest.mark.slow
def test_s26_symlink_outside_never_opened(tmp_path):
    inst = Install.create(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "valid.json"
    target.write_bytes(jdump(fresh_receipt("SYM-000001", name="밖환자")))
    libc, fd = _inotify()
    try:
        wd = libc.inotify_add_watch(fd, os.fsencode(target), IN_ACCESS | 0x20)  # IN_OPEN
        assert wd >= 0
        with Daemon(inst) as d:
            (inst.inbox / "link.json").symlink_to(target)
            time.sleep(3)
            assert not _drain(fd), "the target of an outside symlink was opened"
            assert counters(inst.status())["versions"] == 0
            d.stop()
    finally:
        os.close(fd)
    assert not scan_bytes([inst.data_dir, inst.log_dir], {"n": "밖환자".encode()})
