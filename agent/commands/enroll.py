"""``enroll [--relay URL] --token TOKEN|-``: one-time enrollment with the relay (cli.md §3, relay-api.md §10).

``--token -`` reads the token from the first line of standard input, so it never appears in the
process list or shell history. The token is never printed back, logged or stored. Exit 0 when
enrolled; 5 when the relay is unreachable or refuses (nothing is left behind); 4 for a missing
pinned bundle or bad key files; 2 without a token or relay URL.
"""

from __future__ import annotations

import argparse

from agent.cli import Environment
from agent.commands._common import config_from_args
from agent.errors import ExitStatus


def run(args: argparse.Namespace, env: Environment) -> int:
    from agent.ops.enroll import enroll, read_token

    config = config_from_args(args, env)
    token = read_token(args.token, env.stdin)
    result = enroll(
        config,
        token=token,
        relay_url=args.relay,
        endpoint=getattr(args, "endpoint", None),
        environ=env.environ,
    )
    env.out(f"agent_id: {result.agent_id}")
    env.err(
        f"enrolled as {result.agent_id} (endpoint {result.endpoint.host}:{result.endpoint.port}); "
        f"relay ids: {', '.join(result.relay_ids)}; server certificate valid until "
        f"{result.certificate_expires_at}; signing key {result.signing_key_id}"
        + (" (new)" if result.created_signing_key else "")
    )
    if result.clock_skew_s is not None and abs(result.clock_skew_s) > 60:
        env.err(
            f"warning: this machine's clock differs from the relay's by {result.clock_skew_s} s; "
            "relay requests are refused beyond 300 s — fix the time synchronisation"
        )
    if not config.relay.url:
        env.err("note: relay.url is empty in agent.toml; set it to the relay URL to enable heartbeats")
    return int(ExitStatus.OK)
