"""docker-compose.yml read as YAML (no Docker engine, no ``docker compose config``
here), and what compose would start for a command line: its profile rules, applied.

Compose enables a service without ``profiles`` always, one with profiles when one of
them is named; services named on the command line (``up worker-1``, ``run worker``)
are started whatever their profiles, and only they. Either way their ``depends_on``
come along.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# The subcommands that start containers, and their options that take a value (the
# rest are flags): what is left is service names (for ``run``, the first one only).
STARTING = {"up", "create", "run"}
VALUED = {"--scale", "-t", "--timeout", "--wait-timeout", "--exit-code-from", "--attach",
          "--no-attach", "--pull", "-e", "--env", "--entrypoint", "-v", "--volume", "-p",
          "--publish", "-w", "--workdir", "-u", "--user", "-l", "--label", "--name",
          "--cap-add", "--cap-drop"}
GLOBAL_VALUED = {"-f", "--file", "-p", "--project-name", "--project-directory",
                 "--env-file", "--profile", "--parallel", "--progress", "--ansi"}


def services() -> dict[str, Any]:
    """The services, as loaded once (callers read them, never change them)."""
    return _load(COMPOSE)


@cache
def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    found = loaded["services"]
    assert isinstance(found, dict)
    return found


def profiles_of(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles", []))


def sqlite_workers() -> set[str]:
    """The workers on a SQLite file: the worker image without a store URL (the image's
    default is its SQLite state path)."""
    return {name for name in workers()
            if "INBOX_RULES_STORE_URL" not in services()[name].get("environment", {})}


def postgres_workers() -> set[str]:
    return {name for name in workers()
            if str(services()[name].get("environment", {})
                   .get("INBOX_RULES_STORE_URL", "")).startswith("postgresql://")}


def workers() -> set[str]:
    """The services running the image built from this repository's Dockerfile."""
    found = services()
    built = {service.get("image") for service in found.values() if "build" in service}
    return {name for name, service in found.items()
            if "build" in service or service.get("image") in built}


def started(profiles: Iterable[str], targets: Iterable[str] = ()) -> set[str]:
    """The services ``docker compose --profile P... up [TARGETS]`` starts."""
    found = services()
    named = set(profiles)
    chosen = set(targets) or {
        name for name, service in found.items()
        if not profiles_of(service) or profiles_of(service) & named}
    pending = list(chosen)
    while pending:
        depends_on = found[pending.pop()].get("depends_on", [])
        for dependency in depends_on:  # a list, or a mapping keyed by service
            if dependency not in chosen:
                chosen.add(dependency)
                pending.append(dependency)
    return chosen


@dataclass(frozen=True)
class Command:
    """One documented ``docker compose`` command line that starts containers."""

    where: str
    text: str
    profiles: frozenset[str]
    targets: tuple[str, ...]


def documented_commands(text: str, where: str) -> Iterator[Command]:
    """The starting ``docker compose`` commands in ``text`` (Markdown, or a YAML file's
    comments): inline (```docker compose up```) or in a block, continued over lines with
    a backslash, up to a comment or the closing backtick."""
    for line in re.sub(r"\\\n[ \t]*#?", " ", text).splitlines():
        rest = line
        while "docker compose" in rest:
            before, _, rest = rest.partition("docker compose")
            command = rest.split("`")[0].split(" #")[0].strip().rstrip(".,;:)")
            environment = before.split("`")[-1].split()
            parsed = _parse(command, environment)
            if parsed is not None:
                yield Command(where, "docker compose " + command, *parsed)


def _parse(command: str, environment: list[str]
           ) -> tuple[frozenset[str], tuple[str, ...]] | None:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    profiles: set[str] = set()
    for assignment in environment:
        if assignment.startswith("COMPOSE_PROFILES="):
            profiles.update(filter(None, assignment.partition("=")[2].split(",")))
    index = 0
    while index < len(words) and words[index].startswith("-"):
        option, _, value = words[index].partition("=")
        if option in GLOBAL_VALUED and not value:
            index += 1
            value = words[index] if index < len(words) else ""
        if option == "--profile":
            profiles.add(value)
        index += 1
    if index >= len(words) or words[index] not in STARTING:
        return None
    subcommand, arguments = words[index], words[index + 1:]
    targets: list[str] = []
    skip = False
    for word in arguments:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in VALUED
        else:
            targets.append(word)
            if subcommand == "run":
                break  # the rest is the command run in the container
    return frozenset(profiles), tuple(targets)
