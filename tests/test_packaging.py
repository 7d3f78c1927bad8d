"""What users run and install: docker-compose.yml's two modes that never mix, its
pinned images and the worker image built once, the Dockerfile's HEALTHCHECK (run here
against a local HTTP server), the LICENSE and the exact dev pins.

There is no Docker engine here: the compose file is read as YAML and compose's profile
rules applied to it (tests/support/compose.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain, combinations
from threading import Thread

import pytest

from tests.support.compose import (
    COMPOSE,
    DOCKERFILE,
    ROOT,
    Command,
    documented_commands,
    postgres_workers,
    profiles_of,
    services,
    sqlite_workers,
    started,
    workers,
)

# Where users read compose commands: the compose file's own comments and the docs.
DOCUMENTS = [COMPOSE, ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md")),
             *sorted((ROOT / "deploy").glob("**/*.yml"))]
MODES = {"single": {"worker"}, "scale": {"worker-1", "worker-2", "worker-3"}}


def mixes(running: set[str]) -> bool:
    return bool(running & sqlite_workers()) and bool(running & postgres_workers())


def all_profiles() -> set[str]:
    return set().union(*(profiles_of(service) for service in services().values()))


def profile_sets() -> Iterator[set[str]]:
    names = sorted(all_profiles())
    for chosen in chain.from_iterable(combinations(names, n) for n in range(len(names) + 1)):
        yield set(chosen)


def documented() -> list[Command]:
    return [command for path in DOCUMENTS
            for command in documented_commands(path.read_text(encoding="utf-8"),
                                               str(path.relative_to(ROOT)))]


# -- two modes that never mix ----------------------------------------------------------
def test_each_mode_is_a_profile_of_its_own() -> None:
    assert sqlite_workers() == MODES["single"]
    assert postgres_workers() == MODES["scale"]
    for mode, names in MODES.items():
        for name in names:
            assert profiles_of(services()[name]) == {mode}, name
    assert started({"single"}) == {"rabbitmq", "worker"}
    assert started({"scale"}) == {"rabbitmq", "postgres", *MODES["scale"]}


def test_a_bare_up_starts_nothing() -> None:
    """Every service has a profile, so ``docker compose up`` without one says "no
    service selected" instead of picking a mode for the user."""
    assert [name for name, service in services().items() if not profiles_of(service)] == []
    assert started(set()) == set()


def test_only_naming_both_modes_mixes_them() -> None:
    """Of every combination of profiles, the ones that start a SQLite worker beside the
    PostgreSQL workers are exactly those naming both ``single`` and ``scale``."""
    for profiles in profile_sets():
        assert mixes(started(profiles)) == ({"single", "scale"} <= profiles), profiles


def test_no_documented_command_mixes_the_modes() -> None:
    commands = documented()
    header = [command for command in commands if command.where == COMPOSE.name]
    # The compose file documents both modes, each alone and with observability.
    for mode, names in MODES.items():
        for extra in (set(), {"observability"}):
            assert any(command.profiles == {mode} | extra and not command.targets
                       and names <= started(command.profiles) for command in header), \
                (mode, extra)
    for command in commands:
        assert not {"single", "scale"} <= command.profiles, command
        running = started(command.profiles, command.targets)
        assert not mixes(running), f"{command.where}: `{command.text}` starts {running}"


# -- RabbitMQ keeps its data -----------------------------------------------------------
def test_rabbitmq_has_a_fixed_hostname() -> None:
    """Its data directory is named after the node, rabbit@<hostname>: without a fixed
    hostname a recreated container starts an empty node beside the volume's data."""
    rabbitmq = services()["rabbitmq"]
    assert rabbitmq["hostname"] == "rabbitmq"
    assert "/var/lib/rabbitmq" in {volume.split(":")[1] for volume in rabbitmq["volumes"]}


# -- pinned images, the worker image built once ----------------------------------------
# A full release: major.minor.patch (PostgreSQL's releases are major.minor), then an
# optional variant (-management, -slim-bookworm); never latest, a major or a minor.
RELEASE = re.compile(r"v?(?P<version>\d+(\.\d+)+)(-[a-z0-9][a-z0-9.-]*)?")


def assert_pinned(image: str) -> None:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image}: no tag"
    match = RELEASE.fullmatch(tag)
    assert match is not None, f"{image}: not an exact release"
    parts = 2 if name == "postgres" else 3
    assert match["version"].count(".") + 1 == parts, f"{image}: not an exact release"


def test_every_pulled_image_is_an_exact_release() -> None:
    built = {services()[name]["image"] for name in workers()}
    pulled = {service["image"] for service in services().values()} - built
    assert {image.partition(":")[0] for image in pulled} >= {
        "rabbitmq", "postgres", "prom/prometheus", "grafana/grafana"}
    for image in pulled:
        assert_pinned(image)
    # The broker the tests run against (.ci/ensure-rabbitmq, Debian's 3.10.8).
    assert services()["rabbitmq"]["image"] == "rabbitmq:3.10.8-management"
    assert services()["postgres"]["image"].startswith("postgres:15.")
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert len(bases) == 2 and len(set(bases)) == 1, "both stages on one base"
    assert bases[0].startswith("python:3.12.")
    assert_pinned(bases[0])
    for floating in ("rabbitmq", "rabbitmq:latest", "rabbitmq:3-management", "rabbitmq:3.10",
                     "postgres:15", "python:3.12-slim", "localhost:5000/worker"):
        with pytest.raises(AssertionError):
            assert_pinned(floating)


def test_the_worker_image_is_built_once_per_mode_and_never_pulled() -> None:
    """One image name for every worker; in each mode exactly one service builds it and
    the others run it. Nothing pulls it (it is not on any registry)."""
    found = services()
    assert len({found[name]["image"] for name in workers()}) == 1
    assert workers() == MODES["single"] | MODES["scale"]
    for name in workers():
        assert found[name]["pull_policy"] == "never", name
    for profiles in profile_sets():
        if {"single", "scale"} <= profiles:
            continue
        running = started(profiles)
        builders = {name for name in running if "build" in found[name]}
        assert len(builders) == (1 if running & workers() else 0), (profiles, builders)
    for name in MODES["scale"]:  # started by name: each with worker-1, the builder
        assert "worker-1" in started({"scale"}, ["worker-1", name])


# -- the Dockerfile's HEALTHCHECK ------------------------------------------------------
def healthcheck() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = re.findall(r"^HEALTHCHECK\s+(.*)$", text, flags=re.MULTILINE)
    assert len(found) == 1, "one HEALTHCHECK in the Dockerfile"
    options, _, command = found[0].partition(" CMD ")
    assert "--start-period=" in options and "--interval=" in options
    exec_form = json.loads(command)
    assert isinstance(exec_form, list)
    return [str(word) for word in exec_form]


def test_compose_leaves_the_liveness_check_to_the_image() -> None:
    for name in workers():
        assert "healthcheck" not in services()[name], name


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(status: int) -> Iterator[int]:
    handler = type("Handler", (_Healthz,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(environment: dict[str, str]) -> int:
    command = healthcheck()
    assert command[:2] == ["python", "-c"]
    done = subprocess.run([sys.executable, *command[1:]], env=environment, timeout=30,
                          capture_output=True, check=False)
    return done.returncode


@pytest.mark.parametrize(("status", "host", "healthy"), [
    (200, None, True), (200, "0.0.0.0", True), (200, "127.0.0.1", True), (503, None, False)])
def test_the_healthcheck_asks_healthz(status: int, host: str | None, healthy: bool) -> None:
    with serving(status) as port:
        environment = {"INBOX_RULES_HTTP_PORT": str(port)}
        if host is not None:
            environment["INBOX_RULES_HTTP_HOST"] = host
        assert (run_healthcheck(environment) == 0) == healthy


def test_the_healthcheck_fails_when_nothing_answers() -> None:
    with serving(200) as port:
        pass
    assert run_healthcheck({"INBOX_RULES_HTTP_PORT": str(port)}) != 0


def test_the_healthcheck_passes_with_the_http_port_off() -> None:
    assert run_healthcheck({"INBOX_RULES_HTTP_PORT": "0"}) == 0


# -- LICENSE and the dev pins ----------------------------------------------------------
def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_license_file_is_the_declared_mit() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert project["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} inbox-rules contributors$", text, re.MULTILINE)


def test_the_dev_tools_are_pinned_exactly() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    dev = project["optional-dependencies"]["dev"]
    names = set()
    for requirement in dev:
        pin = requirement.partition(";")[0].strip()  # an environment marker may follow
        name, separator, version = pin.partition("==")
        assert separator and re.fullmatch(r"[0-9][0-9.]*", version), requirement
        names.add(name)
    assert names >= {"pytest", "pytest-timeout", "hypothesis", "ruff", "mypy", "types-PyYAML"}
