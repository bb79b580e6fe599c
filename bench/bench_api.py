"""Benchmark of the relay API fetch path next to nginx serving the same bodies (not a test).

``run(report)`` appends markdown lines: fetch latency p50/p99 and requests/s at 1, 10 and 50
concurrent mTLS clients, with keep-alive and with a new TLS handshake per request, driven from two
client processes (multiprocessing). nginx (Debian package; installed with apt-get when missing)
serves the same response body as a static file over mTLS on another loopback port, in the same
run, with its own generated config in a temp dir. Rate limiting is off (``rate_per_s = 0``).
Targets at 50 keep-alive clients: throughput >= 30 % of nginx, p99 <= 3x nginx.

Every agent request is a real fetch: envelope checks, the replay record (store write), the claim
binding and the document (store reads, decryption), rendering, an ES256 signature, and the audit
record committed before the response. Nothing is cached between requests.

Knobs (environment): ``BENCH_API_SECONDS`` per cell (5), ``BENCH_API_CLIENTS`` ("1,10,50"),
``BENCH_API_MODES`` ("keepalive,handshake"), ``BENCH_API_ROUNDS`` (3): with more than one round
each cell is measured that many times, alternating which server goes first, and the table shows
the medians — the machine is shared, so single runs are noisy. Also reported: the agent's CPU
time per request (the server runs in this process, which otherwise only waits) and the latency of
a durable SQLite commit in the agent's data directory before and after, which bounds the agent:
every fetch commits twice (replay record, audit record) and nginx never waits for the disk; and
the agent process's context switches per request.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DURATION_S = float(os.environ.get("BENCH_API_SECONDS", "5"))
CLIENT_COUNTS = [int(n) for n in os.environ.get("BENCH_API_CLIENTS", "1,10,50").split(",")]
MODES = [m.strip() for m in os.environ.get("BENCH_API_MODES", "keepalive,handshake").split(",")]
ROUNDS = max(1, int(os.environ.get("BENCH_API_ROUNDS", "3")))
CLIENT_PROCESSES = 2
CLAIM = {"claim_no": "CLM-BENCH-1", "consent_id": "CNS-BENCH-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup(root: Path) -> dict[str, Any]:
    """Certificates, keys, a store with the four example documents, the server, one search."""
    import copy
    import hashlib

    from agent import pki
    from agent.api.relaysim import RelayClient
    from agent.api.server import RelayServer
    from agent.audit import AuditLog
    from agent.config import build_config
    from agent.documents.canonical import canonical_form, content_hash
    from agent.keys import generate_keys, load_keyring
    from agent.store import FileFingerprint, Store, StoreRecord

    tls = root / "tls"
    tls.mkdir(parents=True)
    sca_key, sca = pki.make_ca("bench server CA")
    skey, scert = pki.make_cert(sca_key, sca, "99000001", dns=["localhost"], ips=["127.0.0.1"], server=True)
    rca_key, rca = pki.make_ca("bench relay CA")
    ckey, ccert = pki.make_cert(rca_key, rca, "bench-relay", client=True)
    pki.write_certs(tls / "server-ca.crt", sca)
    pki.write_certs(tls / "server.crt", scert, sca)
    pki.write_key(tls / "server.key", skey)
    pki.write_certs(tls / "relay-ca.crt", rca)
    pki.write_certs(tls / "client.crt", ccert)
    pki.write_key(tls / "client.key", ckey)
    raw = {
        "agent": {
            "institution_code": "99000001",
            "data_dir": str(root / "data"),
            "log_dir": str(root / "logs"),
        },
        "api": {
            "listen": "127.0.0.1:0",
            "server_cert": str(tls / "server.crt"),
            "server_key": str(tls / "server.key"),
            "client_ca": str(tls / "relay-ca.crt"),
            "limits": {"rate_per_s": 0, "health_rate_per_s": 0, "max_connections": 200, "max_in_flight": 64},
        },
        "admin": {"listen": "127.0.0.1:0"},
    }
    config = build_config(raw, None, root)
    generate_keys(config.keys_dir)
    keyring = load_keyring(config.keys_dir, require_signing=True)
    store = Store.open(config, keyring=keyring)
    audit = AuditLog.open(config, signer=keyring.signer)
    examples = REPO.parent / "shared" / "spec" / "examples"
    records = []
    for index, name in enumerate(("receipt", "prescription")):
        doc = json.loads((examples / f"{name}.json").read_text(encoding="utf-8"))
        for key in ("source", "received_at", "content_hash", "validation"):
            doc.pop(key, None)
        canon = canonical_form(copy.deepcopy(doc))
        records.append(StoreRecord(index, canon, content_hash(canon)))
    payload = b"bench-export"
    store.commit_file(
        FileFingerprint("/bench/export.json", len(payload), 0, hashlib.sha256(payload).hexdigest()), records
    )
    server = RelayServer(config, store=store, audit=audit, keyring=keyring)
    server.start()
    base = f"https://127.0.0.1:{server.address[1]}"
    with RelayClient(base, tls / "client.crt", tls / "client.key", tls / "server-ca.crt") as client:
        found = client.search(
            claim_no=CLAIM["claim_no"],
            consent_id=CLAIM["consent_id"],
            name="홍길동",
            rrn="900101-1000001",
            period_from="2025-03-01",
            period_to="2025-03-31",
        ).json()
        ids = [d["id"] for d in found["documents"]][:1]
        body = client.fetch(
            claim_no=CLAIM["claim_no"], consent_id=CLAIM["consent_id"], document_ids=ids
        ).content
    return {
        "server": server,
        "store": store,
        "audit": audit,
        "base": base,
        "ids": ids,
        "body": body,
        "tls": tls,
    }


def _start_nginx(root: Path, tls: Path, body: bytes) -> tuple[subprocess.Popen[bytes] | None, str, str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        subprocess.run(["apt-get", "install", "-y", "nginx"], check=False, capture_output=True)
    if not Path(nginx).exists():
        return None, "", "nginx not available"
    www = root / "www"
    www.mkdir()
    (www / "fetch.json").write_bytes(body)
    port = _free_port()
    conf = root / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}/ngx-body; proxy_temp_path {root}/ngx-proxy;
  fastcgi_temp_path {root}/ngx-fcgi; uwsgi_temp_path {root}/ngx-uwsgi; scgi_temp_path {root}/ngx-scgi;
  keepalive_timeout 15s; keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {tls}/server.crt; ssl_certificate_key {tls}/server.key;
    ssl_client_certificate {tls}/relay-ca.crt; ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    root {www};
    location = /fetch.json {{ default_type application/json; }}
  }}
}}
""")
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    return proc, f"https://127.0.0.1:{port}", version


def _worker(
    target: str, base: str, tls: str, ids: list[str], threads: int, keepalive: bool, duration: float, out: Any
) -> None:
    """One client process: ``threads`` concurrent clients for ``duration`` seconds."""
    import requests

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    cert = (f"{tls}/client.crt", f"{tls}/client.key")
    verify = f"{tls}/server-ca.crt"

    def one(session: requests.Session) -> None:
        t0 = time.perf_counter()
        if target == "agent":
            body = json.dumps(
                {
                    "request_id": str(uuid.uuid4()),
                    "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "relay_id": "bench-relay",
                    "claim": CLAIM,
                    "document_ids": ids,
                }
            ).encode()
            resp = session.post(
                base + "/v1/documents/fetch",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=(5, 30),
            )
        else:
            resp = session.get(base + "/fetch.json", timeout=(5, 30))
        elapsed = time.perf_counter() - t0
        with lock:
            if resp.status_code == 200:
                latencies.append(elapsed)
            else:
                errors[0] += 1

    def loop() -> None:
        session = None
        while time.monotonic() < stop_at:
            if session is None or not keepalive:
                if session is not None:
                    session.close()
                session = requests.Session()
                session.cert, session.verify, session.trust_env = cert, verify, False
            try:
                one(session)
            except requests.RequestException:
                with lock:
                    errors[0] += 1
        if session is not None:
            session.close()

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((latencies, errors[0]))


def _measure(
    target: str, base: str, tls: Path, ids: list[str], clients: int, keepalive: bool
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = min(CLIENT_PROCESSES, clients)
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    started = time.monotonic()
    children = [
        ctx.Process(target=_worker, args=(target, base, str(tls), ids, n, keepalive, DURATION_S, queue))
        for n in shares
    ]
    for child in children:
        child.start()
    results = [queue.get(timeout=DURATION_S + 120) for _ in children]
    for child in children:
        child.join()
    elapsed = max(DURATION_S, time.monotonic() - started - 0.0)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    if not latencies:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": errors, "n": 0}
    return {
        "rps": len(latencies) / DURATION_S,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": errors,
        "n": len(latencies),
        "wall": elapsed,
    }


def _commit_latency_ms(directory: Path, n: int = 20) -> float:
    """Median time of a ``synchronous=FULL`` WAL commit in ``directory`` (what one fsync costs)."""
    import sqlite3
    import statistics

    path = directory / "bench-probe.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO t VALUES (?)", (str(i),))
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _median_cell(runs: list[dict[str, float]]) -> dict[str, float]:
    import statistics

    return {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99")} | {
        "errors": sum(r["errors"] for r in runs),
        "cpu_ms": statistics.median(r.get("cpu_ms", 0.0) for r in runs),
        "csw": statistics.median(r.get("csw", 0.0) for r in runs),
        "sys_ms": statistics.median(r.get("sys_ms", 0.0) for r in runs),
    }


def run(report: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    setup = _setup(root / "agent")
    data_dir = root / "agent" / "data"
    nginx_proc, nginx_base, nginx_version = _start_nginx(root, setup["tls"], setup["body"])
    try:
        commit_before = _commit_latency_ms(data_dir)
        report.append("## Relay API fetch vs nginx (mTLS, loopback)")
        report.append("")
        report.append(
            f"- {os.cpu_count()} CPUs; {DURATION_S:.0f} s per cell; {CLIENT_PROCESSES} client processes "
            f"(Python `requests`); response body {len(setup['body'])} bytes (1 signed document); "
            f"agent: POST /v1/documents/fetch with audit record per request; nginx: GET of the "
            f"same bytes as a static file ({nginx_version or 'not available'})."
        )
        if ROUNDS > 1:
            report.append(f"- {ROUNDS} rounds per cell, alternating which server goes first; medians shown.")
        report.append("")
        report.append(
            "| server | connections | clients | req/s | p50 ms | p99 ms | errors | agent CPU ms/req |"
        )
        report.append("|---|---|---|---:|---:|---:|---:|---:|")
        cells: dict[tuple[str, bool, int], dict[str, float]] = {}
        targets = [("agent", setup["base"])] + ([("nginx", nginx_base)] if nginx_proc else [])
        for keepalive in [mode == "keepalive" for mode in MODES]:
            for clients in CLIENT_COUNTS:
                runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in targets}
                for round_no in range(ROUNDS):
                    for name, base in targets if round_no % 2 == 0 else list(reversed(targets)):
                        cpu0 = time.process_time()  # this process hosts the agent's server threads
                        ru0 = resource.getrusage(resource.RUSAGE_SELF)
                        r = _measure(name, base, setup["tls"], setup["ids"], clients, keepalive)
                        if name == "agent" and r["n"]:
                            ru1 = resource.getrusage(resource.RUSAGE_SELF)
                            r["cpu_ms"] = (time.process_time() - cpu0) / r["n"] * 1000
                            r["csw"] = (ru1.ru_nvcsw - ru0.ru_nvcsw + ru1.ru_nivcsw - ru0.ru_nivcsw) / r["n"]
                            r["sys_ms"] = (ru1.ru_stime - ru0.ru_stime) / r["n"] * 1000
                        runs[name].append(r)
                for name, _ in targets:
                    r = cells[(name, keepalive, clients)] = _median_cell(runs[name])
                    cpu = f"{r['cpu_ms']:.2f}" if name == "agent" else ""
                    report.append(
                        f"| {name} | {'keep-alive' if keepalive else 'new handshake'} | {clients} | "
                        f"{r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {int(r['errors'])} | {cpu} |"
                    )
        report.append("")
        agent50, nginx50 = cells.get(("agent", True, 50)), cells.get(("nginx", True, 50))
        if agent50 and nginx50 and nginx50["rps"]:
            ratio = agent50["rps"] / nginx50["rps"]
            p99x = agent50["p99"] / nginx50["p99"] if nginx50["p99"] else float("inf")
            report.append(
                f"- Target at 50 keep-alive clients: throughput {ratio:.0%} of nginx (target >= 30 %: "
                f"{'met' if ratio >= 0.3 else 'NOT met'}), p99 {p99x:.1f}x nginx (target <= 3x: "
                f"{'met' if p99x <= 3 else 'NOT met'})."
            )
            report.append(
                f"- Agent context switches (voluntary + involuntary) per fetch at 50 keep-alive "
                f"clients: {agent50['csw']:.1f}; of its CPU time per fetch, {agent50['sys_ms']:.2f} ms "
                f"is in the kernel (sockets, fsync, futex)."
            )
        commit_after = _commit_latency_ms(data_dir)
        audit = setup["audit"]
        records = audit.head()[0]
        transactions = getattr(audit, "transactions", None)
        report.append(
            f"- Durable SQLite commit in the data directory (median of 20): {commit_before:.2f} ms before, "
            f"{commit_after:.2f} ms after the run. Every fetch waits for two durable commits in "
            f"turn — its replay record (store) and its audit record (audit log), each group-committed "
            f"with the requests queued meanwhile — so a slow or shared disk caps the agent (nginx "
            f"never waits for the disk)."
        )
        if transactions:
            report.append(f"- Audit log: {records} records in {transactions} transactions (group commit).")
        report.append("")
    finally:
        if nginx_proc is not None:
            nginx_proc.send_signal(signal.SIGTERM)
            try:
                nginx_proc.wait(10)
            except subprocess.TimeoutExpired:
                nginx_proc.kill()
        setup["server"].stop()
        setup["store"].close()
        setup["audit"].close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    lines: list[str] = []
    run(lines)
    print("\n".join(lines))
