"""``doctor``: every check that can go wrong on an installation, each OK / WARN / FAIL with a fix.

Checks are independent functions returning ``Check`` results; one failing check never hides
another. Nothing here prints personal data: checks report paths, modes, counts and key ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from agent.config import SETTINGS, Config, parse_duration, parse_listen
from agent.errors import AgentError
from agent.keys import BLIND_INDEX_FILE, SIGNING_FILE, check_key_file, kek_files

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MIN_FREE_FRACTION = 0.10


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


CheckFn = Callable[[Config], Iterator[Check]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_key_files(config: Config) -> Iterator[Check]:
    files = list(kek_files(config.keys_dir).values()) or [config.keys_dir / "kek-1.key"]
    files += [config.keys_dir / BLIND_INDEX_FILE, config.keys_dir / SIGNING_FILE, config.api.server_key]
    for path in files:
        try:
            check_key_file(path)
        except AgentError as exc:
            yield Check(
                f"key file {path.name}", FAIL, exc.message, f"chmod 600 {path}; chown to the service user"
            )
        else:
            yield Check(f"key file {path.name}", OK, "0600, owned by the service user")
    yield from _check_daemon_user(config)


def _check_daemon_user(config: Config) -> Iterator[Check]:
    """The daemon must not run as root (security.md §10); doctor itself may (it is an admin tool)."""
    if os.name == "nt":
        return
    state = _running_state(config)
    if state is None:
        if os.geteuid() == 0:
            yield Check(
                "service user",
                WARN,
                "doctor runs as root; the daemon is not running",
                "run the daemon as the dedicated `silson-agent` user (the systemd unit does)",
            )
        return
    try:
        status = Path(f"/proc/{int(state['pid'])}/status").read_text()
        uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
    except (OSError, StopIteration, ValueError, KeyError, TypeError):
        return
    if uid == 0:
        yield Check(
            "service user",
            FAIL,
            "the daemon runs as root",
            "run it as the dedicated `silson-agent` user (service install does)",
        )
    else:
        yield Check("service user", OK, f"daemon runs as uid {uid}")


def _load_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def check_certificates(config: Config) -> Iterator[Check]:
    """Server certificate and key, the relay-client CA and the relay-server CA: each reported on
    its own (cli.md §4: doctor FAILs while either relay CA is missing — also before enrollment,
    when there is no server certificate yet)."""
    now = _now()
    cert_path, key_path, ca_path = config.api.server_cert, config.api.server_key, config.api.client_ca
    leaf: x509.Certificate | None = None
    try:
        chain = _load_certs(cert_path)
        leaf = chain[0]
    except (OSError, ValueError, IndexError):
        yield Check(
            "server certificate",
            FAIL,
            f"{cert_path} missing or not PEM",
            "run `silson-agent enroll` (or `init --dev-certs` for a test installation)",
        )
    if leaf is not None:
        yield from _check_server_cert(leaf, key_path, now)
        yield from _check_server_chain(config, chain)
    try:
        cas = _load_certs(ca_path)
    except (OSError, ValueError):
        yield Check(
            "relay client CA",
            FAIL,
            f"{ca_path} missing or not PEM",
            "enroll writes it; it must hold only the relay-client issuer",
        )
    else:
        if leaf is not None and any(ca.subject == leaf.issuer for ca in cas):
            yield Check(
                "relay client CA",
                FAIL,
                "api.client_ca contains the issuer of the server certificate",
                "api.client_ca must hold only the relay-client issuer (relay-api.md §10)",
            )
        else:
            yield Check("relay client CA", OK, f"{len(cas)} CA certificate(s)")
    server_ca = config.relay.server_ca
    if not Path(server_ca).is_file():
        yield Check(
            "relay server CA",
            FAIL,
            f"{server_ca} missing",
            "copy the relay program's pinned CA bundle there before enrolling",
        )
    else:
        yield Check("relay server CA", OK, "present")
    crl = config.api.client_crl
    if crl is not None and str(crl) and not Path(crl).is_file():
        yield Check("client CRL", FAIL, f"{crl} missing", "fix api.client_crl or remove it")


def _check_server_chain(config: Config, chain: list[x509.Certificate]) -> Iterator[Check]:
    """cli.md §3 doctor "certificates (chain, …)": each certificate of ``server.crt`` is signed by
    the next, and the last is a root in the file or issued by a CA the installation holds (the
    relay program's CA bundle from enrollment, or ``tls/dev-ca.crt`` of a test installation).
    Otherwise a relay verifying the agent's certificate cannot build the chain."""
    name = "server certificate chain"
    anchors: list[x509.Certificate] = []
    for path in (config.relay.server_ca, Path(config.api.server_cert).parent / "dev-ca.crt"):
        with contextlib.suppress(OSError, ValueError):
            anchors += _load_certs(Path(path))
    for cert, issuer in zip(chain, chain[1:], strict=False):
        if not _issued_by(cert, issuer):
            yield Check(
                name,
                FAIL,
                f"{cert.subject.rfc4514_string()} is not signed by the next certificate in the file",
                "install the certificate chain the relay issued (leaf first, then its CA)",
            )
            return
    last = chain[-1]
    if last.subject == last.issuer and _issued_by(last, last):
        yield Check(name, OK, f"{len(chain)} certificate(s), ending at a root in the file")
    elif any(_issued_by(last, ca) for ca in anchors):
        yield Check(name, OK, f"{len(chain)} certificate(s), issued by a CA of this installation")
    else:
        # WARN, not FAIL: the relay may hold the issuing CA without this installation holding it.
        yield Check(
            name,
            WARN,
            f"cannot be confirmed: the issuer of {last.subject.rfc4514_string()} is neither in the "
            "file nor a CA of this installation",
            "install the full chain the relay issued, or enroll again (`silson-agent enroll`)",
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_server_cert(leaf: x509.Certificate, key_path: Path, now: dt.datetime) -> Iterator[Check]:
    days = (leaf.not_valid_after_utc - now).days
    if now < leaf.not_valid_before_utc or days < 0:
        yield Check("server certificate", FAIL, "not valid now", "renew through the relay (enroll)")
    elif days <= 30:
        yield Check(
            "server certificate",
            WARN,
            f"expires in {days} days",
            "renewal runs daily; check relay reachability",
        )
    else:
        yield Check("server certificate", OK, f"expires in {days} days")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo

        def pub(k: Any) -> bytes:
            return k.public_bytes(serialization.Encoding.DER, spki)  # type: ignore[no-any-return]

        if pub(key.public_key()) == pub(leaf.public_key()):
            yield Check("server key matches certificate", OK, "")
        else:
            yield Check(
                "server key matches certificate",
                FAIL,
                "key and certificate differ",
                "install the key that belongs to tls/server.crt",
            )
    except (OSError, ValueError):
        yield Check("server key matches certificate", FAIL, f"{key_path} missing or unreadable", "")


def _running_state(config: Config) -> dict[str, Any] | None:
    """The state file of this installation's daemon if it is running, else ``None``."""
    from agent.ops.daemon import is_running, read_state

    try:
        state = read_state(config)
        return state if state is not None and is_running(state) else None
    except Exception:  # noqa: BLE001 - unknown: treat as not running (the port check then FAILs)
        return None


def check_ports(config: Config) -> Iterator[Check]:
    agent_running = _running_state(config) is not None
    for name, listen in (("api.listen", config.api.listen), ("admin.listen", config.admin.listen)):
        host, port = parse_listen(listen)
        if port == 0:
            yield Check(f"{name} bindable", OK, "ephemeral port")
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                if agent_running:
                    yield Check(f"{name} bindable", OK, f"{host}:{port} held by the running agent")
                else:  # cli.md §2: port in use → exit 5
                    yield Check(
                        f"{name} bindable",
                        FAIL,
                        f"{host}:{port} in use by another program",
                        "stop the other program holding the port, or change the listen address",
                    )
            else:
                yield Check(f"{name} bindable", OK, f"{host}:{port}")
    if config.admin.allow_non_loopback:
        yield Check(
            "admin listener", WARN, "admin.allow_non_loopback = true", "keep admin.listen on 127.0.0.1"
        )


def check_watch_folders(config: Config) -> Iterator[Check]:
    for index, watch in enumerate(config.watch):
        path = watch.path
        if not path.is_dir():
            yield Check(
                f"watch[{index}] folder",
                FAIL,
                f"{path} unreachable (missing or not mounted)",
                "mount the share / create the folder",
            )
        elif not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            yield Check(
                f"watch[{index}] folder",
                FAIL,
                f"{path} not readable and writable",
                "grant the service user read/write access",
            )
        else:
            yield Check(f"watch[{index}] folder", OK, str(path))


def check_profiles(config: Config) -> Iterator[Check]:
    """Every watch folder's profile loads (else `run` would exit 4)."""
    from agent.commands._common import load_named_profile
    from agent.formats.profiles import ProfileError

    for index, watch in enumerate(config.watch):
        if watch.profile in ("", "standard"):
            continue
        try:
            load_named_profile(watch.profile, config)
        except ProfileError as exc:
            yield Check(f"watch[{index}] profile", FAIL, str(exc), "fix the profile file or the config")
        else:
            yield Check(f"watch[{index}] profile", OK, watch.profile)


def check_disk(config: Config) -> Iterator[Check]:
    data_dir = config.data_dir
    probe = data_dir if data_dir.exists() else data_dir.parent
    usage = shutil.disk_usage(probe)
    fraction = usage.free / usage.total if usage.total else 0
    status = OK if fraction >= MIN_FREE_FRACTION else WARN
    yield Check(
        "disk space",
        status,
        f"{usage.free // (1024 * 1024)} MiB free ({fraction:.0%})",
        "" if status == OK else "free space on the data volume; ingest pauses when full",
    )


def check_settings(config: Config) -> Iterator[Check]:
    keep = config.retention.keep
    if keep < 3 * 365 * 86400:
        yield Check("retention.keep", WARN, "shorter than 3 years", "claims may come up to 3 years later")
    for key, setting in SETTINGS["api.limits"].items():
        value = config.limits.values[key]
        default = parse_duration(setting.default) if setting.kind == "duration" else setting.default
        looser = (
            value > default
            if key not in ("rate_per_s", "health_rate_per_s")
            else (value == 0 or value > default)
        )
        if looser:
            yield Check(
                f"api.limits.{key}", WARN, "looser than the default", "use the default unless benchmarking"
            )


def check_store(config: Config) -> Iterator[Check]:
    if not (config.data_dir / "store.db").exists():
        yield Check("store", OK, "no store yet (created on first run)")
        return
    try:
        from agent.keys import load_keyring
        from agent.store import Store

        store = Store.open(config, keyring=load_keyring(config.keys_dir))
        try:
            report = store.verify(full=False)
        finally:
            store.close()
    except AgentError as exc:
        yield Check("store integrity", FAIL, exc.message, "run `silson-agent store verify`; restore a backup")
        return
    if report.ok:
        yield Check(
            "store integrity", OK, f"integrity_check ok, {report.records_checked} sampled record(s) decrypted"
        )
    else:
        yield Check("store integrity", FAIL, "; ".join(report.errors[:3]), "run `silson-agent store verify`")


def check_audit(config: Config) -> Iterator[Check]:
    if not (config.data_dir / "audit.db").exists():
        yield Check("audit log", OK, "no audit log yet")
        return
    try:
        from agent.audit import AuditLog
        from agent.ops.daemon import audit_review

        log = AuditLog.open(config)
        result = log.verify()
        writable = log.healthy()
        review = audit_review(log, _now())
        log.close()
    except AgentError as exc:
        yield Check("audit log", FAIL, exc.message, "run `silson-agent audit verify`")
        return
    if not result.ok:
        yield Check(
            "audit chain",
            FAIL,
            f"broken at seq {result.first_bad_seq} ({result.kind})",
            "investigate: the access log was modified",
        )
    else:
        yield Check("audit chain", OK, f"intact up to seq {result.head[0] if result.head else 0}")
    yield Check(
        "audit log writable",
        OK if writable else FAIL,
        "" if writable else "cannot append",
        "" if writable else "check permissions and free space of data_dir",
    )
    if review["review_overdue"]:
        month = review["review_month"]
        yield Check(
            "monthly audit review",
            WARN,
            f"no access-log review of {month} (due by the 10th)",
            f"run `silson-agent audit report --month {month}`",
        )
    elif review["review_overdue"] is False:
        yield Check("monthly audit review", OK, "up to date")


def check_relay_clock(config: Config) -> Iterator[Check]:
    """relay-api.md §11 / C-37: the clock difference the daemon's last heartbeat measured against
    the relay's ``server_time`` — more than 60 s a warning, more than 300 s an error (the relay's
    requests are then refused with clock-skew)."""
    from agent.ops.heartbeat import SKEW_ERROR_S, SKEW_WARNING_S

    state = _running_state(config)
    relay = (state or {}).get("relay") or {}
    skew, level = relay.get("clock_skew_s"), relay.get("clock_skew")
    if state is None:
        yield Check(
            "clock vs relay", OK, "not measured: the daemon is not running (its heartbeats measure it)"
        )
    elif skew is None:
        yield Check("clock vs relay", OK, "not measured yet (no heartbeat answer with server_time)")
    elif level == "error":
        yield Check(
            "clock vs relay",
            FAIL,
            f"differs by {skew} s (more than {SKEW_ERROR_S} s)",
            "fix time synchronisation (NTP)",
        )
    elif level == "warning":
        yield Check(
            "clock vs relay",
            WARN,
            f"differs by {skew} s (more than {SKEW_WARNING_S} s)",
            "check time synchronisation (NTP)",
        )
    else:
        yield Check("clock vs relay", OK, f"differs by {skew} s")


def check_relay_heartbeat(config: Config) -> Iterator[Check]:
    """relay-api.md §11: "A failing heartbeat never affects serving or ingest; it shows in
    `status`, `doctor` and the log" — the daemon's last heartbeat, as its state file reports it."""
    name = "relay heartbeat"
    if not config.relay.url:
        yield Check(name, OK, "offline installation (relay.url is empty): no heartbeat")
        return
    state = _running_state(config)
    if state is None:
        yield Check(name, OK, "not measured: the daemon is not running")
        return
    relay = state.get("relay") or {}
    if not relay.get("enrolled"):
        yield Check(name, WARN, "not enrolled: no heartbeat is sent", "run `silson-agent enroll`")
    elif relay.get("last_result") == "error":
        failures = int(relay.get("consecutive_failures") or 0)
        yield Check(
            name,
            WARN,
            f"failing: {relay.get('last_error') or 'error'}, {failures} in a row"
            f" (last success {relay.get('last_success_at') or 'never'}); serving and ingest go on",
            "check the network path to relay.url and the relay's status; see the log",
        )
    elif relay.get("last_success_at"):
        yield Check(name, OK, f"last answered at {relay['last_success_at']}")
    else:
        yield Check(name, OK, "no heartbeat sent yet (the first goes out within 30 s of start)")


CHECKS: list[CheckFn] = [
    check_key_files,
    check_certificates,
    check_ports,
    check_watch_folders,
    check_profiles,
    check_disk,
    check_settings,
    check_store,
    check_audit,
    check_relay_clock,
    check_relay_heartbeat,
]


def run_checks(config: Config) -> list[Check]:
    results: list[Check] = []
    for fn in CHECKS:
        try:
            results.extend(fn(config))
        except Exception as exc:  # a broken check is a FAIL of that check, not a crash of doctor
            results.append(
                Check(fn.__name__.removeprefix("check_"), FAIL, f"check crashed: {type(exc).__name__}")
            )
    return results
