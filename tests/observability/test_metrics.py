"""Metrics as Prometheus reads them: the text format parsed back, not our own render."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts import BadEvent, parse_event
from worker.observability.metrics import DEAD_LETTER_FAMILIES, Metrics, reason_family


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text: (name, sorted labels) -> value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_the_counters_the_driver_increments_are_in_the_text_format() -> None:
    metrics = Metrics()
    metrics.events_consumed(200)
    metrics.events_consumed(3)
    metrics.updates_published(150)
    metrics.redelivered(7)
    metrics.committed()
    metrics.committed()
    metrics.batch_failed()
    metrics.events_consumed(0)  # an empty batch changes nothing and does not raise

    assert value(metrics, "inbox_rules_events_consumed_total") == 203
    assert value(metrics, "inbox_rules_updates_published_total") == 150
    assert value(metrics, "inbox_rules_redeliveries_total") == 7
    assert value(metrics, "inbox_rules_commits_total") == 2
    assert value(metrics, "inbox_rules_failed_batches_total") == 1


def test_dead_letters_count_by_family_and_every_family_exists_at_zero() -> None:
    metrics = Metrics()
    for family in DEAD_LETTER_FAMILIES:
        assert value(metrics, "inbox_rules_dead_letters_total", reason=family) == 0
    metrics.dead_lettered("message too large: 70000 bytes exceeds the limit of 65536")
    metrics.dead_lettered("invalid JSON: EOF while parsing a value at line 1 column 5", n=2)
    metrics.dead_lettered("data.agent_id: Field required")
    metrics.dead_lettered("something nobody foresaw")

    assert value(metrics, "inbox_rules_dead_letters_total", reason="too_large") == 1
    assert value(metrics, "inbox_rules_dead_letters_total", reason="invalid_json") == 2
    assert value(metrics, "inbox_rules_dead_letters_total", reason="schema") == 1
    assert value(metrics, "inbox_rules_dead_letters_total", reason="other") == 1
    # The label has a fixed set of values: free-text reasons never become series.
    reasons = {dict(labels)["reason"] for (name, labels) in samples(metrics)
               if name == "inbox_rules_dead_letters_total"}
    assert reasons == set(DEAD_LETTER_FAMILIES)


def _reason(body: bytes) -> str:
    with pytest.raises(BadEvent) as caught:
        parse_event(body, max_bytes=1000)
    return caught.value.reason


ENVELOPE = {"event_id": "e1", "account_id": "acc-1", "occurred_at": "2026-11-24T10:00:00Z"}


@pytest.mark.parametrize(("body", "family"), [
    (b"x" * 1001, "too_large"),
    (b'{"type": "\xff"}', "not_utf8"),
    (b'{"type": ', "invalid_json"),
    (b"[" * 400 + b"]" * 400, "invalid_json"),  # nested deeper than the parser goes
    (b"[1, 2]", "schema"),
    (b'"a string"', "schema"),
    (b"{}", "schema"),
    (json.dumps({**ENVELOPE, "type": "conversation.exploded"}).encode(), "schema"),
    (json.dumps({**ENVELOPE, "type": "conversation.created"}).encode(), "schema"),
    (json.dumps({**ENVELOPE, "type": "conversation.transferred", "conversation_id": "c-1",
                 "data": {}}).encode(), "schema"),
    (json.dumps({**ENVELOPE, "type": "conversation.assigned", "conversation_id": "c-1",
                 "data": {"agent_id": 12}}).encode(), "schema"),
])
def test_real_parse_event_reasons_fall_into_the_right_family(body: bytes, family: str) -> None:
    """Checked against parse_event itself: a reworded reason fails here, not on a
    dashboard that silently starts counting everything as "other"."""
    assert reason_family(_reason(body)) == family


@pytest.mark.parametrize(("reason", "family"), [
    # worker/service.py's own reasons
    ("worker error: KeyError: 'acc-1'", "worker_error"),
    ("unreadable: RecursionError: maximum recursion depth exceeded", "invalid_json"),
    ("unroutable: no queue bound to inbox.categories", "unroutable"),
    ("NO_ROUTE: returned by the broker", "unroutable"),
    ("", "other"),
    ("delivery limit reached", "other"),
])
def test_the_workers_own_reasons_have_families(reason: str, family: str) -> None:
    assert reason_family(reason) == family


def test_histograms_gauges_and_info() -> None:
    metrics = Metrics()
    for seconds in (0.01, 0.02, 0.3):
        metrics.observe_batch(seconds)
    metrics.observe_confirm_latency(0.07)
    metrics.set_unacked_events(180)
    metrics.set_cached_accounts(42)
    metrics.rules_version("e768bf72fbeb")

    assert value(metrics, "inbox_rules_batch_duration_seconds_count") == 3
    assert value(metrics, "inbox_rules_batch_duration_seconds_sum") == pytest.approx(0.33)
    assert value(metrics, "inbox_rules_batch_duration_seconds_bucket", le="0.025") == 2
    assert value(metrics, "inbox_rules_event_confirm_latency_seconds_count") == 1
    assert value(metrics, "inbox_rules_unacked_events") == 180
    assert value(metrics, "inbox_rules_cached_accounts") == 42
    assert value(metrics, "inbox_rules_rules_info", version="e768bf72fbeb") == 1

    assert value(metrics, "inbox_rules_broker_blocked") == 0, "a series from the start"
    metrics.set_broker_blocked(True)
    assert value(metrics, "inbox_rules_broker_blocked") == 1

    metrics.rules_version("0123456789ab")  # a reload: one version at a time
    versions = [dict(labels)["version"] for (name, labels) in samples(metrics)
                if name == "inbox_rules_rules_info"]
    assert versions == ["0123456789ab"]


def test_owned_partitions_follow_handovers() -> None:
    metrics = Metrics()
    metrics.owned_partitions([0, 3, 5])
    assert value(metrics, "inbox_rules_owned_partitions") == 3
    metrics.owned_partitions([3, 7])
    owned = {dict(labels)["partition"] for (name, labels) in samples(metrics)
             if name == "inbox_rules_partition_owned"}
    assert owned == {"3", "7"}
    assert value(metrics, "inbox_rules_owned_partitions") == 2
    metrics.owned_partitions([])
    assert value(metrics, "inbox_rules_owned_partitions") == 0


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two workers in one process (or two tests) never share or clash over series."""
    first, second = Metrics(), Metrics(process_metrics=False)
    first.events_consumed(5)
    assert value(first, "inbox_rules_events_consumed_total") == 5
    assert value(second, "inbox_rules_events_consumed_total") == 0
    assert not any(name.startswith("process_") or name.startswith("inbox_rules_process_")
                   for name, _ in samples(second))
