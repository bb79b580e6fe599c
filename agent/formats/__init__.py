"""Export formats: bytes → records (JSON, JSONL, XML, CSV; UTF-8/BOM/CP949), writers, profiles.

Pure: no file system access except `load_profile`, which reads a profile file. Public API::

    read_export(data, *, file_name, profile=None) -> ReadResult
    supported_extension(name, profile=None) -> bool
    write_export(documents, *, format, encoding="utf-8") -> bytes
    write_exports_by_type(documents, *, format, encoding="utf-8") -> dict[str, bytes]
    load_profile(name_or_path, search_dirs) -> Profile
"""

from __future__ import annotations

from agent.formats.profiles import Profile, ProfileError, load_profile, shipped_profiles_dir
from agent.formats.reader import read_export, supported_extension
from agent.formats.result import ReadResult, Record
from agent.formats.writers import write_export, write_exports_by_type

__all__ = [
    "Profile",
    "ProfileError",
    "ReadResult",
    "Record",
    "load_profile",
    "read_export",
    "shipped_profiles_dir",
    "supported_extension",
    "write_export",
    "write_exports_by_type",
]
