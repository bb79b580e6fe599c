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


def load_named_profile(name: str | None, config: Config | None) -> Any:
    if not name or name == "standard":
        return None
    from agent.formats import load_profile

    return load_profile(name, profile_search_dirs(config))


def print_json(env: Environment, value: Any) -> None:
    env.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    env.stdout.flush()
