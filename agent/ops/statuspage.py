"""The localhost status page: one self-contained HTML page rendered from ``status --json``.

Served only on the loopback admin listener. It shows operational facts (counts, folders, jobs,
certificate expiry, disk) and nothing of class U/S/P (documents.md §10): the status document it
renders holds no personal data, and every value is HTML-escaped anyway. No external assets, no
scripts: it refreshes itself every 10 seconds with a meta tag.
"""

from __future__ import annotations

import html
from typing import Any

from agent.ops.daemon import attention_lines


def _e(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _row(label: str, value: Any, cls: str = "") -> str:
    return f'<tr><th>{html.escape(label)}</th><td class="{cls}">{_e(value)}</td></tr>'


def render_status_html(status: dict[str, Any]) -> str:
    running = bool(status.get("running"))
    documents = status.get("documents") or {}
    ingest = status.get("ingest") or {}
    api = status.get("api") or {}
    disk = status.get("disk") or {}
    problems = []
    if not running:
        problems.append("The agent is not running (에이전트가 실행 중이 아닙니다).")
    unreachable = [w for w in status.get("watch") or [] if not w.get("reachable")]
    if unreachable:
        problems.append(f"{len(unreachable)} watch folder(s) unreachable (감시 폴더 접근 불가).")
    if ingest.get("paused"):
        problems.append(
            "Ingest is paused: the data disk is full or the store is unavailable (수신 일시 중지); "
            "files wait in the folder and are taken when space returns."
        )
    if ingest.get("files_quarantined"):
        problems.append(
            f"{ingest['files_quarantined']:,} file(s) in quarantine: run `silson-agent quarantine list`."
        )
    days = api.get("server_cert_expires_in_days")
    if isinstance(days, int) and days <= 30:
        problems.append(f"Server certificate expires in {days} day(s) (인증서 만료 임박).")
    problems += attention_lines(status)  # the same lines as the text `status`
    banner = "".join(f"<li>{html.escape(p)}</li>" for p in problems) or "<li>All good (정상).</li>"
    watch_rows = "".join(
        f'<tr><td>{_e(w.get("path"))}</td><td class="{"ok" if w.get("reachable") else "bad"}">'
        f"{'reachable' if w.get('reachable') else 'UNREACHABLE'}</td><td>{_e(w.get('pending'))}</td>"
        f"<td>{_e(w.get('observer'))}</td></tr>"
        for w in status.get("watch") or []
    )
    job_rows = "".join(
        f"<tr><td>{_e(j.get('name'))}</td><td>{_e(j.get('next_run_at'))}</td>"
        f'<td class="{"bad" if j.get("last_result") == "error" else ""}">{_e(j.get("last_result"))}</td></tr>'
        for j in status.get("jobs") or []
    )
    free = disk.get("data_dir_free_bytes")
    free_text = f"{free / 1e9:,.1f} GB" if isinstance(free, int) else None
    return f"""<!doctype html>
<html lang="ko"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>silson-agent status</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} h1{{font-size:1.4em}}
table{{border-collapse:collapse;margin:0 0 1.5em}} th,td{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}
th{{background:#f4f4f4}} .ok{{color:#176f2c}} .bad{{color:#b00020;font-weight:bold}}
ul.banner{{padding:.7em 2em;background:{"#eef8ee" if not problems else "#fff3f3"};border:1px solid #ccc}}
</style></head><body>
<h1>silson-agent {_e(status.get("agent_version"))} — 요양기관 {_e(status.get("institution_code"))}</h1>
<ul class="banner" id="summary">{banner}</ul>
<table id="overview">
{_row("Running (실행 중)", running, "ok" if running else "bad")}
{_row("Uptime (s)", status.get("uptime_s"))}
{_row("Current documents, active", documents.get("current_active"))}
{_row("Current documents, cancelled", documents.get("current_cancelled"))}
{_row("Versions stored", documents.get("versions_total"))}
{_row("Files accepted", ingest.get("files_accepted"))}
{_row("Files duplicate", ingest.get("files_duplicate"))}
{_row("Files quarantined", ingest.get("files_quarantined"), "bad" if ingest.get("files_quarantined") else "")}
{_row("Files pending", ingest.get("files_pending"))}
{_row("Records committed", ingest.get("records_committed"))}
{_row("Last commit", ingest.get("last_commit_at"))}
{_row("Relay port", api.get("listen"))}
{_row("Last relay request", api.get("last_request_at"))}
{_row("Server certificate expires in (days)", days)}
{_row("Disk free (data_dir)", free_text)}
</table>
<h2>Watch folders (감시 폴더)</h2>
<table id="watch"><tr><th>path</th><th>state</th><th>pending</th><th>observer</th></tr>{watch_rows}</table>
<h2>Scheduled jobs (예약 작업)</h2>
<table id="jobs"><tr><th>job</th><th>next run</th><th>last result</th></tr>{job_rows}</table>
</body></html>
"""
