"""``init --dir DIR``: create a ready-to-run installation (cli.md §4).

Writes ``agent.toml`` (relative paths resolve against DIR), the key files (0600, never
overwritten), the folder layout, and with ``--dev-certs`` a throw-away PKI for local testing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent import keys, pki
from agent.cli import Environment
from agent.errors import ConfigError, ExitStatus, UsageError
from agent.fsutil import atomic_write, ensure_dir

CONFIG_TEMPLATE = """\
# silson-agent configuration (cli.md §5). Relative paths resolve against this file's folder.
[agent]
institution_code = "{code}"       # 요양기관기호, 8 digits
institution_type = "{kind}"       # hospital | clinic | pharmacy
data_dir = "data"
log_dir = "logs"

[[watch]]
path = "inbox"
profile = "standard"
polling = false
scan_interval = "30s"
settle = "2s"
sentinel = "auto"
source_mode = "move"

[api]
listen = "{listen}"
server_cert = "tls/server.crt"
server_key = "tls/server.key"
client_ca = "tls/relay-ca.crt"

[admin]
listen = "{admin}"

[relay]
url = ""
server_ca = "tls/relay-server-ca.crt"

[retention]
keep = "3y"
audit_keep = "3y"
"""


def write_installation(
    directory: Path,
    *,
    code: str,
    kind: str,
    dev_certs: bool,
    listen: str = "0.0.0.0:8443",
    admin: str = "127.0.0.1:8780",
) -> None:
    if not (len(code) == 8 and code.isdigit()):
        raise UsageError("--institution-code must be 8 digits (요양기관기호)")
    ensure_dir(directory)
    keys_dir = directory / "keys"
    if (
        keys.kek_files(keys_dir)
        or (keys_dir / keys.BLIND_INDEX_FILE).exists()
        or (keys_dir / keys.SIGNING_FILE).exists()
        or (directory / "tls" / "server.key").exists()
    ):
        raise ConfigError(f"refusing to overwrite existing keys in {directory}")
    for sub in ("inbox", "data", "logs", "tls"):
        ensure_dir(directory / sub)
    os.chmod(directory / "tls", 0o700)
    os.chmod(directory / "logs", 0o750)
    keys.generate_keys(keys_dir)
    if dev_certs:
        pki.make_dev_certs(directory / "tls", institution_code=code)
    config_path = directory / "agent.toml"
    if not config_path.exists():
        atomic_write(
            config_path,
            CONFIG_TEMPLATE.format(code=code, kind=kind, listen=listen, admin=admin).encode("utf-8"),
            0o600,
        )


def run(args: argparse.Namespace, env: Environment) -> int:
    directory = Path(args.dir)
    if not directory.is_absolute():
        directory = Path(env.cwd) / directory
    write_installation(
        directory,
        code=args.institution_code or "99000001",
        kind=args.institution_type or "clinic",
        dev_certs=args.dev_certs,
    )
    env.err(f"initialised {directory}")
    if not args.dev_certs:
        env.err(
            "next: copy the relay program's CA bundle to tls/relay-server-ca.crt, then run "
            "`silson-agent enroll --token -`"
        )
    return ExitStatus.OK
