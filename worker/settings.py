"""The worker's settings, read once from environment variables and passed in."""

from __future__ import annotations

import difflib
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.ids import DEFAULT_MAX_MESSAGE_BYTES
from worker.errors import SettingsError

ENV_PREFIX = "INBOX_RULES_"
# Seconds: the longest member lease. Every worker judges a member by that member's own
# lease, so the PostgreSQL store's members table checks the same bound.
MAX_MEMBER_LEASE = 86_400.0
# Settings whose value may carry a password: an error shows them masked (mask_url).
SECRET_SETTINGS = frozenset({"amqp_url", "store_url"})
# Variables with the prefix that the project's own tests and benchmarks read: not
# settings, and not typos either.
NOT_SETTINGS = frozenset({"INBOX_RULES_TEST_POSTGRES", "INBOX_RULES_ORDER_RUNS"})


class Settings(BaseSettings):
    """Everything an operator can set; every field is an environment variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      populate_by_name=True)

    # AMQP_URL is the one name the contract fixes; the others carry the prefix.
    amqp_url: str = Field("amqp://guest:guest@localhost:5672/%2F", validation_alias="AMQP_URL",
                          description="Broker URL (amqp:// or amqps://).")
    events_exchange: str = Field("chat.events",
                                 description="Topic exchange the platform publishes events to.")
    events_queue: str = Field("inbox-rules.events",
                              description="The worker's input quorum queue (bound with #).")
    dead_letter_queue: str = Field("chat.events.dlq",
                                   description="Queue receiving bad and undeliverable events.")
    updates_exchange: str = Field("inbox.categories",
                                  description="Topic exchange category updates go to.")
    # High on purpose: RabbitMQ 3.x counts returns on a lost connection too (see
    # worker/amqp/topology.py); the worker dead-letters bad events itself.
    requests_exchange: str = Field("inbox.requests", description=(
        "Direct exchange for snapshot and explain requests (routing key = kind)."))
    requests_queue: str = Field("inbox-rules.requests",
                                description="The worker's queue of requests.")
    delivery_limit: int = Field(100_000, ge=1, description=(
        "Deliveries of one event before the broker dead-letters it: a last resort against "
        "a crash loop, high because lost connections count too."))
    prefetch: int = Field(600, ge=1, description=(
        "Unacknowledged events held at once: at least batch size x pipeline depth, or "
        "batches cannot overlap."))
    batch_size: int = Field(200, ge=1, description="Events per store commit at most.")
    max_batch_delay: float = Field(0.05, ge=0, description=(
        "Seconds a partial batch waits for more events."))
    publish_window: int = Field(2000, ge=1, description="Unconfirmed publishes at most.")
    store_url: str | None = Field(None, description=(
        "postgresql://... : state in PostgreSQL and several workers sharing the load by "
        "account partition (unset: the SQLite file, one active worker)."))
    partitions: int = Field(16, ge=1, le=1024, description=(
        "Account partitions (PostgreSQL store only); fixed for the life of the store."))
    member_lease: float = Field(
        6.0, gt=0, le=MAX_MEMBER_LEASE, allow_inf_nan=False, description=(
        "Seconds without a heartbeat after which a worker counts as gone and its "
        "partitions move (PostgreSQL store only)."))
    state_path: Path = Field(Path("./inbox-rules.sqlite3"),
                             description="SQLite file holding the worker's state.")
    rules_poll_interval: float = Field(5.0, ge=0, description=(
        "Seconds between looks at the state store's live rules version (inbox-rules rules "
        "deploy / rollback); a new one is adopted in each partition's order (0: never look)."))
    dedup_window: int = Field(1000, ge=1, description=(
        "Event ids remembered per account to drop redeliveries (oldest forgotten first)."))
    tombstone_window: int = Field(10_000, ge=1, description=(
        "Deleted conversation ids remembered per account, so late events cannot revive "
        "them."))
    account_cache_size: int = Field(2000, ge=1, description=(
        "Accounts held in memory at most (least recently used evicted): with the "
        "windows, this bounds the worker's memory."))
    view_sets: int = Field(1024, ge=1, description=(
        "Compiled view sets kept in memory, at most (least recently used out; a set "
        "used again is compiled again)."))
    pipeline_depth: int = Field(3, ge=1, description=(
        "Batches in flight at once: the next is evaluated while earlier ones wait for "
        "confirms and their commit."))
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1, description=(
        "Larger events are dead-lettered; the worker keeps no more of a body than this, "
        "so their dead letter carries only its first this many bytes (x-error says so)."))
    rules_dir: Path | None = Field(None, description="Rule directory (default: shipped rules).")
    time_lag: float = Field(1.0, ge=0, description=(
        "Seconds the worker's clock must be past a time threshold crossing before it is "
        "made (rules with time facts): room for events still on their way and clock "
        "skew."))
    heartbeat: int = Field(30, ge=0, description="AMQP heartbeat in seconds (0: broker's).")
    amqp_intake: bool = Field(True, description=(
        "Take deliveries off the byte stream past pika's frame objects (about a sixth "
        "less CPU per event); false: every frame through pika (an escape hatch, and "
        "the baseline of benchmarks.intake). With false, pika assembles each body whole "
        "before the worker sees it: one message up to the broker's max_message_size "
        "(128 MiB by default) is held in memory while it arrives, though only its first "
        "INBOX_RULES_MAX_MESSAGE_BYTES are kept after."))
    reconnect_max_delay: float = Field(30.0, gt=0, description=(
        "Longest wait between reconnects or store retries, seconds."))
    tls_ca_file: Path | None = Field(None, description="CA bundle for amqps:// (default: system).")
    tls_cert_file: Path | None = Field(None, description="Client certificate for amqps://.")
    tls_key_file: Path | None = Field(None, description="Client key for amqps://.")
    tls_verify: bool = Field(True, description="Verify the broker's certificate and host name.")
    http_port: int = Field(9464, ge=0, le=65535, description=(
        "Port serving /metrics, /healthz and /readyz (0: no HTTP)."))
    http_host: str = Field("0.0.0.0", description=(  # noqa: S104 - reachable in a container
        "Address the HTTP port binds (127.0.0.1: this host only)."))
    log_format: Literal["text", "json"] = Field("text", description=(
        "Log lines as text or one JSON object per line."))
    status_interval: float = Field(30.0, ge=0, description=(
        "Seconds between status lines while busy (0: none)."))

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for an amqps:// URL, None for plain amqp://."""
        if urlsplit(self.amqp_url).scheme != "amqps":
            return None
        context = ssl.create_default_context(
            cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
        if self.tls_cert_file is not None:
            context.load_cert_chain(str(self.tls_cert_file),
                                    str(self.tls_key_file) if self.tls_key_file else None)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def safe_amqp_url(self) -> str:
        return mask_url(self.amqp_url)


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else (ENV_PREFIX + field).upper()


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, ``overrides`` (by field name, or
    ``AMQP_URL=...``) first. Raises :class:`SettingsError` with one line per bad
    variable, ``NAME=value: reason`` (a URL's password masked), for a person to fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("\n".join(_problem(error) for error in exc.errors())) from exc


def _problem(error: Any) -> str:
    loc = error["loc"]
    head = str(loc[0]) if loc else ""
    field = next((name for name in Settings.model_fields
                  if head in (name, env_name(name))), None)
    if field is None:  # not one field's: said as pydantic says it
        return f"settings: {error['msg']}"
    value = error.get("input", "")
    if field in SECRET_SETTINGS:  # a password never shows, however the value came
        value = mask_url(value) if isinstance(value, str) else "***"
    return f"{env_name(field)}={value}: {error['msg']}"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``INBOX_RULES_*`` variable in ``environ`` that sets nothing
    (most likely a typo: the setting keeps its default), naming the setting it probably
    meant if one is close."""
    known = {env_name(name).upper() for name in Settings.model_fields}
    # Compared without the prefix they all share, or every name looks close.
    suffixes = sorted(name[len(ENV_PREFIX):] for name in known if name.startswith(ENV_PREFIX))
    warnings = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads names in any case
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(upper[len(ENV_PREFIX):], suffixes, n=1)
        meant = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        warnings.append(f"warning: {name} is not a setting and is ignored{meant}")
    return warnings


def describe_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, for --help."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.default
        shown = "-" if default is None else str(default)
        rows.append((env_name(name), shown, info.description or ""))
    return rows


def mask_url(url: str) -> str:
    """The URL with its password replaced: credentials never reach a log."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
