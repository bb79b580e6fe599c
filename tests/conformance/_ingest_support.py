"""Black-box helpers for the conformance suite (written from /work/shared/spec only).

Everything here drives the agent from the outside: the CLI as a subprocess
(``python -m agent ...``), the daemon as a real process (``python -m agent run``), real files.
"""

from __future__ import annotations

import atexit
import copy
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO.parent / "shared" / "spec"
EXAMPLES = SPEC / "examples"
AGENT_FIELDS = ("source", "received_at", "content_hash", "validation")
KST = dt.timezone(dt.timedelta(hours=9))

READY_RE = re.compile(r"^ready: api=(?P<api>\S+):(?P<api_port>\d+) admin=(?P<admin>\S+):(?P<admin_port>\d+)$")
PROBLEM_RE = re.compile(r"^(?P<file>.+):(?P<record>\d+|-): (?P<rule>[RW]-\d{3}) (?P<msg>.+)$")


# --------------------------------------------------------------------------- CLI


def agent_env(extra: dict[str, str] | None = None, *, drop: tuple[str, ...] = ()) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("SILSON_AGENT_CONFIG", None)
    for k in drop:
        env.pop(k, None)
    if extra:
        env.update(extra)
    return env


def cli(
    *args: str | os.PathLike,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run ``python -m agent ARGS`` as a subprocess; stdout/stderr as text."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)],
        cwd=str(cwd or REPO),
        env=env if env is not None else agent_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_inproc(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The same CLI in-process (``agent.cli.main(argv, env)``): used for frequent read-only polling."""
    import io

    from agent.cli import Environment, main

    out, err = io.StringIO(), io.StringIO()
    env = Environment(
        stdin=io.StringIO(""), stdout=out, stderr=err, environ=agent_env(), cwd=str(cwd or REPO)
    )
    code = main([str(a) for a in args], env)
    return subprocess.CompletedProcess(list(map(str, args)), code, out.getvalue(), err.getvalue())


def problems(stdout: str) -> list[dict[str, str]]:
    """Parse ``FILE:RECORD: R-NNN message`` lines of ``check`` output."""
    out = []
    for line in stdout.splitlines():
        m = PROBLEM_RE.match(line)
        if m:
            out.append(m.groupdict())
    return out


def rules_of(result: subprocess.CompletedProcess) -> set[str]:
    return {p["rule"] for p in problems(result.stdout)} | {p["rule"] for p in problems(result.stderr)}


# --------------------------------------------------------------------------- documents


def example(name: str, *, strip: bool = True) -> dict:
    doc = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    if strip:
        for k in AGENT_FIELDS:
            doc.pop(k, None)
    return doc


def jdump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")


def canonical_bytes(doc: dict) -> bytes:
    """JCS for documents without floats: sorted keys, compact, UTF-8 (documents.md §9.3)."""
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def content_hash(doc: dict) -> str:
    return hashlib.sha256(canonical_bytes(doc)).hexdigest()


def today_kst() -> dt.date:
    return dt.datetime.now(KST).date()


def set_path(doc: dict, path: str, value: Any) -> dict:
    """Return a deep copy of doc with dotted path set (``lines.0.copay``); value DELETE removes it."""
    doc = copy.deepcopy(doc)
    parts = path.split(".")
    cur: Any = doc
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    last = parts[-1]
    if value is DELETE:
        if isinstance(cur, list):
            del cur[int(last)]
        else:
            cur.pop(last, None)
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return doc


DELETE = object()


def xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return xml_escape(str(v))


def _xml_children(obj: dict, indent: str) -> str:
    parts = []
    for k, v in obj.items():
        if isinstance(v, dict):
            parts.append(f"{indent}<{k}>\n{_xml_children(v, indent + '  ')}{indent}</{k}>\n")
        elif isinstance(v, list):
            for el in v:
                if isinstance(el, dict):
                    parts.append(f"{indent}<{k}>\n{_xml_children(el, indent + '  ')}{indent}</{k}>\n")
                else:
                    parts.append(f"{indent}<{k}>{_xml_value(el)}</{k}>\n")
        elif v is None:
            continue
        else:
            parts.append(f"{indent}<{k}>{_xml_value(v)}</{k}>\n")
    return "".join(parts)


def to_xml(
    docs: list[dict],
    *,
    declaration: str = '<?xml version="1.0" encoding="UTF-8"?>\n',
    keep_type_child: bool = False,
    type_attr: bool = True,
) -> str:
    """The standard XML serialisation of exports.md §2."""
    out = [declaration, "<documents>\n"]
    for d in docs:
        d = dict(d)
        dtype = d["document_type"] if not keep_type_child else d.get("document_type")
        if not keep_type_child:
            d.pop("document_type", None)
        attr = f' type="{dtype}"' if type_attr else ""
        out.append(f"  <document{attr}>\n{_xml_children(d, '    ')}  </document>\n")
    out.append("</documents>\n")
    return "".join(out)


CSV_EXAMPLE = """\
schema_version,document_type,document_no,version,status,issued_on,institution.ykiho,institution.name,institution.type_code,institution.business_reg_no,patient.name,patient.rrn,dispensed_on,days_supplied,prescription_issue_no,prescribing_institution.name,prescribing_institution.ykiho,pharmacist_name,totals.copay,totals.insurer,totals.full_self_pay,total_charge,patient_charge_total,paid.card,paid.cash_receipt,paid.cash,paid.total,lines.line_no,lines.code,lines.name,lines.dose,lines.daily_count,lines.days,lines.coverage
1.0,pharmacy_receipt,P202503-000042,1,active,2025-03-14,99000002,예시약국,81,1112233332,홍길동,9001011000001,2025-03-14,3,20250314-00017,예시가정의원,99000001,성춘향,3600,8400,300,12300,3900,3900,0,0,3900,1,699999991,예시정500밀리그램,1,3,3,covered
1.0,pharmacy_receipt,P202503-000042,1,active,2025-03-14,99000002,예시약국,81,1112233332,홍길동,9001011000001,2025-03-14,3,20250314-00017,예시가정의원,99000001,성춘향,3600,8400,300,12300,3900,3900,0,0,3900,2,699999992,예시시럽,2.5,3,3,full_copay_100
1.0,pharmacy_receipt,P202503-000042,1,active,2025-03-14,99000002,예시약국,81,1112233332,홍길동,9001011000001,2025-03-14,3,20250314-00017,예시가정의원,99000001,성춘향,3600,8400,300,12300,3900,3900,0,0,3900,3,699999993,예시캡슐,0.5,2,3,covered
1.0,pharmacy_receipt,P202503-000043,1,active,2025-03-14,99000002,예시약국,81,1112233332,김철수,9203152000003,2025-03-14,3,20250314-00018,예시가정의원,99000001,성춘향,1500,3500,0,5000,1500,1500,0,0,1500,,,,,,,
"""


def fresh_receipt(
    no: str, *, version: int = 1, name: str | None = None, rrn: str | None = None, **changes: Any
) -> dict:
    """The §12.1 receipt with another document_no (a distinct natural key)."""
    d = example("receipt")
    d["document_no"] = no
    d["version"] = version
    if name is not None:
        d["patient"]["name"] = name
    if rrn is not None:
        d["patient"]["rrn"] = rrn
    d.update(changes)
    return d


def minimal_cancellation(base: dict, version: int) -> dict:
    """documents.md §9.4: only the fields a cancellation record must carry."""
    return {
        "schema_version": base["schema_version"],
        "document_type": base["document_type"],
        "document_no": base["document_no"],
        "version": version,
        "status": "cancelled",
        "issued_on": base["issued_on"],
        "institution": {"ykiho": base["institution"]["ykiho"], "name": base["institution"]["name"]},
        "patient": {"name": base["patient"]["name"]},
    }


# --------------------------------------------------------------------------- TOML


def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    raise TypeError(type(v))


def dump_toml(data: dict) -> str:
    lines: list[str] = []

    def table(prefix: str, tbl: dict, array: bool = False) -> None:
        lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        subs = []
        for k, v in tbl.items():
            if isinstance(v, dict):
                subs.append((k, v, False))
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                subs.append((k, v, True))
            else:
                lines.append(f"{k} = {_toml_scalar(v)}")
        lines.append("")
        for k, v, arr in subs:
            if arr:
                for el in v:
                    table(f"{prefix}.{k}", el, True)
            else:
                table(f"{prefix}.{k}", v)

    for k, v in data.items():
        if isinstance(v, dict):
            table(k, v)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for el in v:
                table(k, el, True)
        else:
            lines.insert(0, f"{k} = {_toml_scalar(v)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- installation


_TEMPLATES: dict[tuple[str, str], Path] = {}


def _template(code: str, kind: str) -> Path:
    """One ``init --dev-certs`` per process and (code, kind); installations are copies of it."""
    key = (code, kind)
    if key not in _TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="conf-tpl-"))
        atexit.register(shutil.rmtree, base, True)
        root = base / "inst"
        r = cli("init", "--dir", root, "--institution-code", code, "--institution-type", kind, "--dev-certs")
        assert r.returncode == 0, r.stderr
        _TEMPLATES[key] = root
    return _TEMPLATES[key]


class Install:
    """An installation made by ``init --dir DIR --dev-certs``, with free loopback ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.toml = root / "agent.toml"

    @classmethod
    def create(
        cls,
        tmp: Path,
        *,
        code: str = "99000001",
        kind: str = "clinic",
        watch: dict | None = None,
        config: dict | None = None,
        name: str = "inst",
    ) -> Install:
        root = tmp / name
        shutil.copytree(_template(code, kind), root, symlinks=True)
        inst = cls(root)
        cfg = inst.config()
        cfg.setdefault("api", {})["listen"] = "127.0.0.1:0"
        cfg.setdefault("admin", {})["listen"] = "127.0.0.1:0"
        w = cfg["watch"][0]
        w.update({"scan_interval": "1s", "settle": "1s"})
        if watch:
            w.update(watch)
        for section, values in (config or {}).items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        inst.write_config(cfg)
        return inst

    def config(self) -> dict:
        return tomllib.loads(self.toml.read_text(encoding="utf-8"))

    def write_config(self, cfg: dict) -> None:
        self.toml.write_text(dump_toml(cfg), encoding="utf-8")

    def edit(self, section: str, **values: Any) -> None:
        cfg = self.config()
        if section == "watch":
            cfg["watch"][0].update(values)
        else:
            cfg.setdefault(section, {}).update(values)
        self.write_config(cfg)

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def run_cli(self, *args: str | os.PathLike, **kw: Any) -> subprocess.CompletedProcess:
        return cli(*args, "--config", self.toml, **kw)

    def status(self) -> dict:
        r = cli_inproc("status", "--json", "--config", self.toml)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def quarantine(self) -> list[dict]:
        r = cli_inproc("quarantine", "list", "--json", "--config", self.toml)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        if isinstance(data, dict):  # tolerate {"entries": [...]}
            for v in data.values():
                if isinstance(v, list):
                    return v
        return data

    def drop(self, name: str, content: bytes | str, *, atomic: bool = True) -> Path:
        """Hand a file over by write-then-rename (exports.md §1.1)."""
        if isinstance(content, str):
            content = content.encode("utf-8")
        final = self.inbox / name
        if atomic:
            tmp = self.inbox / (name + ".tmp")
            tmp.write_bytes(content)
            os.replace(tmp, final)
        else:
            final.write_bytes(content)
        return final


def counters(status: dict) -> dict:
    ing = status["ingest"]
    docs = status["documents"]
    return {
        "accepted": ing["files_accepted"],
        "duplicate": ing["files_duplicate"],
        "quarantined": ing["files_quarantined"],
        "active": docs["current_active"],
        "cancelled": docs["current_cancelled"],
        "versions": docs["versions_total"],
        "records": ing["records_committed"],
    }


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.15, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or pred}: last={last!r}")


def files_done(st: dict) -> int:
    ing = st["ingest"]
    return ing["files_accepted"] + ing["files_duplicate"] + ing["files_quarantined"]


class Daemon:
    """``python -m agent run --config TOML`` as a real process."""

    def __init__(self, inst: Install) -> None:
        self.inst = inst
        self.proc: subprocess.Popen | None = None
        self.err_path = inst.root / f"daemon-{time.monotonic_ns()}.stderr"
        self.ready: re.Match | None = None

    def start(self, timeout: float = 40.0) -> Daemon:
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.inst.toml)],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            cwd=str(self.inst.root),
            env=agent_env(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr().splitlines():
                if line.startswith("ready:"):
                    self.ready_line = line
                    self.ready = READY_RE.match(line)
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.05)
        raise AssertionError("daemon not ready: " + self.stderr())

    def stderr(self) -> str:
        try:
            return self.err_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._err.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._err.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        try:
            self._err.close()
        except Exception:
            pass

    # -- ingest helpers
    _last: dict | None = None

    def ingest(
        self,
        name: str,
        content: bytes | str,
        *,
        timeout: float = 30.0,
        atomic: bool = True,
        stays: bool = False,
    ) -> dict:
        """Drop a file and wait for its outcome; return the counter delta.

        In move mode the file leaves the folder once its records are committed or it is quarantined
        (cli.md §6), so we wait for that; ``stays=True`` (keep mode, R-001) waits on the counters.
        """
        before = self._last if self._last is not None else counters(self.inst.status())
        done0 = before["accepted"] + before["duplicate"] + before["quarantined"]
        path = self.inst.drop(name, content, atomic=atomic)
        if stays:
            wait_for(
                lambda: files_done(self.inst.status()) > done0,
                timeout,
                interval=0.3,
                what=f"outcome for {name}",
            )
        else:
            wait_for(lambda: not path.exists(), timeout, interval=0.05, what=f"{name} taken from the folder")
        after = counters(self.inst.status())
        if not stays and after["accepted"] + after["duplicate"] + after["quarantined"] == done0:
            after = wait_for(
                lambda: (lambda c: c if c["accepted"] + c["duplicate"] + c["quarantined"] > done0 else None)(
                    counters(self.inst.status())
                ),
                timeout,
                interval=0.3,
                what=f"counters for {name}",
            )
        self._last = after
        return {k: after[k] - before[k] for k in after}

    def forget(self) -> None:
        self._last = None


def scan_bytes(roots: list[Path], needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Byte-wise scan of every regular file under roots; returns needle label -> files containing it."""
    hits: dict[str, list[str]] = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if p.is_symlink() or not p.is_file():
                    continue
                data = p.read_bytes()
                for label, needle in needles.items():
                    if needle and needle in data:
                        hits.setdefault(label, []).append(str(p))
    return hits


_RRN_RE = re.compile(rb"(?<![0-9])[0-9]{6}-?[0-9][0-9*]{6}(?![0-9*])")
_HANGUL_UTF8 = re.compile(rb"(?:[\xea-\xed][\x80-\xbf][\x80-\xbf])+")
_HANGUL_CP949 = re.compile(rb"(?:[\xb0-\xc8][\xa1-\xfe])+")


def scan_phi(
    roots: list[Path], names: set[str], rrns: set[str], extra: dict[str, bytes] | None = None
) -> dict[str, list[str]]:
    """Like ``scan_bytes(roots, phi_needles(...))`` but fast for many needles."""
    rrn_forms: dict[bytes, str] = {}
    for rrn in rrns:
        rrn_forms[rrn.encode()] = f"rrn:{rrn}"
        rrn_forms[f"{rrn[:6]}-{rrn[6:]}".encode()] = f"rrn-hyphen:{rrn}"
        rrn_forms[f"{rrn[:7]}******".encode()] = f"masked:{rrn}"
        rrn_forms[f"{rrn[:6]}-{rrn[6]}******".encode()] = f"masked-hyphen:{rrn}"
    hits: dict[str, list[str]] = {}
    for root in roots:
        paths = [root] if root.is_file() else [Path(dp) / f for dp, _d, fs in os.walk(root) for f in fs]
        for p in paths:
            if p.is_symlink() or not p.is_file():
                continue
            data = p.read_bytes()
            for m in _RRN_RE.finditer(data):
                label = rrn_forms.get(m.group(0))
                if label:
                    hits.setdefault(label, []).append(str(p))
            for rx, codec in ((_HANGUL_UTF8, "utf-8"), (_HANGUL_CP949, "cp949")):
                for m in rx.finditer(data):
                    if len(m.group(0)) < 4:
                        continue
                    try:
                        run = m.group(0).decode(codec)
                    except UnicodeDecodeError:
                        continue
                    for n in names:
                        if n in run:
                            hits.setdefault(f"name-{codec}:{n}", []).append(str(p))
            for label, needle in (extra or {}).items():
                if needle in data:
                    hits.setdefault(label, []).append(str(p))
    return hits


def phi_needles(names: set[str], rrns: set[str], extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Fixture PHI per security.md §12: RRNs 13-digit and hyphenated, masked forms; names UTF-8/CP949."""
    out: dict[str, bytes] = {}
    for rrn in rrns:
        out[f"rrn:{rrn}"] = rrn.encode()
        out[f"rrn-hyphen:{rrn}"] = f"{rrn[:6]}-{rrn[6:]}".encode()
        out[f"masked:{rrn}"] = f"{rrn[:7]}******".encode()
        out[f"masked-hyphen:{rrn}"] = f"{rrn[:6]}-{rrn[6]}******".encode()
    for n in names:
        out[f"name-utf8:{n}"] = n.encode("utf-8")
        try:
            out[f"name-cp949:{n}"] = n.encode("cp949")
        except UnicodeEncodeError:
            pass
    out.update(extra or {})
    return out
