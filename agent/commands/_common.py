"""Helpers shared by command modules: config loading, profile lookup, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli import Environment
from agent.config import Config, load_config
from agent.errors import ConfigError

SHIPPED_PROFILES = Path(__file__).resolve().parent.parent.parent / "config" / "profiles"


def config_from_args(args: argparse.Namespace, env: Environment) -> Config:
    return load_config(getattr(args, "config", None), env.environ)


def optional_config(args: argparse.Namespace, env: Environment) -> Config | None:
    """The config when one is given or found; offline commands (check, convert) work without."""
    try:
        return config_from_args(args, env)
    except ConfigError:
        if getattr(args, "config", None):
            raise
        return None


def profile_search_dirs(config: Config | None) -> list[Path]:
    dirs = []
    if config is not None:
        dirs += [config.base_dir, config.base_dir / "profiles"]
    dirs.append(SHIPPED_PROFILES)
    frozen = getattr(sys, "_MEIPASS", None)  # PyInstaller bundle: profiles are data files
    if frozen:
        dirs.append(Path(frozen) / "config" / "profiles")
    try:  # installed/frozen builds ship profiles as package data
        from importlib import resources

        dirs.append(Path(str(resources.files("agent") / "profiles")))
    except (ModuleNotFoundError, TypeError):
        pass
    return dirs


def load_named_profile(name: str | None, config: Config | None, *, cwd: str | None = None) -> Any:
    """The profile ``name``: ``standard``, a name looked up in the profile folders, or a file path.

    A relative file path is found, in order: against ``cwd`` (a ``--profile`` given on the command
    line), then against the config's folder (a ``[[watch]] profile`` — cli.md §4: relative paths
    resolve against the config's directory — whatever the daemon's working directory), then in the
    other profile folders (e.g. the shipped ``vendor_a_csv.toml``)."""
    if not name or name == "standard":
        return None
    from agent.formats.profiles import is_profile_path, load_profile

    dirs = profile_search_dirs(config)
    candidate = Path(name)
    if is_profile_path(name) and not candidate.is_absolute():
        bases = ([Path(cwd)] if cwd is not None else []) + dirs
        found = next((base / candidate for base in bases if (base / candidate).is_file()), None)
        if found is not None:
            name = str(found)
    return load_profile(name, dirs)


def print_json(env: Environment, value: Any) -> None:
    env.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    env.stdout.flush()
