"""The driver's parts alone: the confirm window, the batches in flight, a returned
message's verdict, the report the monitor takes."""

from __future__ import annotations

import dataclasses

from worker.amqp.topology import Topology
from worker.driver.batches import InFlight, unroutable
from worker.driver.confirms import Confirm, ConfirmWindow
from worker.driver.state import Batch, Report
from worker.link import Outgoing, Returned
from worker.pipeline import Plan
from worker.settings import Settings


def _window(published: int) -> ConfirmWindow:
    window = ConfirmWindow()
    for sequence in range(1, published + 1):
        window.sent(sequence)
    return window


def test_confirms_in_order_move_the_window() -> None:
    window = _window(3)
    assert window.on_confirm(1, multiple=False, ok=True) is Confirm.CONFIRMED
    assert window.on_confirm(2, multiple=False, ok=True) is Confirm.CONFIRMED
    assert window.covers(2) and not window.covers(3)


def test_a_confirm_out_of_order_waits_for_the_gap() -> None:
    window = _window(4)
    window.on_confirm(2, multiple=False, ok=True)
    window.on_confirm(4, multiple=False, ok=True)
    assert window.confirmed == 0 and window.ahead == {2, 4}
    window.on_confirm(1, multiple=False, ok=True)
    assert window.confirmed == 2 and window.ahead == {4}
    window.on_confirm(3, multiple=False, ok=True)
    assert window.confirmed == 4 and not window.ahead


def test_a_multiple_confirm_covers_everything_up_to_it_and_drops_what_it_passed() -> None:
    window = _window(6)
    window.on_confirm(3, multiple=False, ok=True)
    window.on_confirm(6, multiple=False, ok=True)
    window.on_confirm(4, multiple=True, ok=True)
    assert window.confirmed == 4 and window.ahead == {6}
    window.on_confirm(5, multiple=True, ok=True)
    assert window.confirmed == 6 and not window.ahead


def test_the_window_closes_when_enough_wait_for_their_confirm() -> None:
    window = _window(3)
    assert not window.open(3) and window.open(4)
    window.on_confirm(1, multiple=False, ok=True)
    assert window.open(3)


def test_a_refusal_fails_the_batches_unless_it_concerns_discarded_ones() -> None:
    window = _window(2)
    assert window.on_confirm(2, multiple=False, ok=False) is Confirm.REFUSED
    window.discard()
    window.sent(3)
    assert window.on_confirm(2, multiple=False, ok=False) is Confirm.STALE
    assert window.on_confirm(3, multiple=False, ok=False) is Confirm.REFUSED


def test_ticks_are_aside_a_refused_one_counts_as_done() -> None:
    window = _window(1)
    window.sent_aside(2)
    window.sent_aside(3)
    assert window.aside == {2, 3}
    assert window.on_confirm(2, multiple=False, ok=False) is Confirm.CONFIRMED
    assert window.aside == {3}
    window.on_confirm(3, multiple=True, ok=True)
    assert not window.aside and window.confirmed == 3


def test_a_new_connection_numbers_from_one_again() -> None:
    window = _window(5)
    window.on_confirm(2, multiple=True, ok=True)
    window.on_confirm(4, multiple=False, ok=True)
    window.discard()
    window.reset()
    assert (window.confirmed, window.published, window.stale_upto, window.ahead) == (
        0, 0, 0, set())


class _Link:
    """Numbers publishes like a link; down after ``up_to``."""

    def __init__(self, up_to: int = 10**9) -> None:
        self.sent: list[Outgoing] = []
        self.up_to = up_to

    def publish(self, message: Outgoing) -> int | None:
        if len(self.sent) >= self.up_to:
            return None
        self.sent.append(message)
        return len(self.sent)


def _message(n: int) -> Outgoing:
    return Outgoing(exchange="x", routing_key=str(n), body=b"{}", message_id=str(n))


def _in_flight(*sizes: int) -> InFlight:
    in_flight = InFlight(ConfirmWindow())
    for size in sizes:
        in_flight.batches.append(Batch(Plan(), [_message(i) for i in range(size)]))
    return in_flight


def test_batches_publish_in_order_within_the_window() -> None:
    in_flight = _in_flight(2, 3)
    link = _Link()
    assert in_flight.pump(link.publish, window=3) is False
    assert len(link.sent) == 3
    first, second = in_flight.batches
    assert first.all_published and first.last_sequence == 2
    assert second.published == 1 and second.last_sequence is None


def test_only_confirmed_batches_at_the_head_form_a_group() -> None:
    in_flight = _in_flight(2, 1, 1)
    in_flight.pump(_Link().publish, window=10)
    assert in_flight.confirmed_group() == []
    in_flight.confirms.on_confirm(2, multiple=True, ok=True)
    assert in_flight.confirmed_group() == [in_flight.batches[0]]
    in_flight.confirms.on_confirm(4, multiple=False, ok=True)  # the third, not the second
    assert in_flight.confirmed_group() == [in_flight.batches[0]]
    in_flight.confirms.on_confirm(3, multiple=False, ok=True)
    assert in_flight.confirmed_group() == list(in_flight.batches)


def test_a_link_down_stops_the_pump() -> None:
    in_flight = _in_flight(3)
    assert in_flight.pump(_Link(up_to=1).publish, window=10) is False
    assert in_flight.batches[0].published == 1


def test_what_a_returned_message_means() -> None:
    topology = dataclasses.replace(Topology.from_settings(Settings()), partitions=4)
    dead = Returned(exchange=topology.dead_letter_exchange, routing_key="", message_id=None,
                    reply_text="NO_ROUTE")
    assert "dead letter was unroutable" in (unroutable(topology, dead) or "")
    routed = Returned(exchange=topology.partitions_exchange, routing_key="3",
                      message_id=None, reply_text="NO_ROUTE")
    assert topology.partition_queue(3) in (unroutable(topology, routed) or "")
    update = Returned(exchange=topology.updates_exchange, routing_key="a", message_id=None,
                      reply_text="NO_ROUTE")
    assert unroutable(topology, update) is None


def test_the_report_is_taken_once() -> None:
    report = Report()
    report.finished(Batch(Plan(), []))
    assert len(report.take_batch_timings()) == 1
    assert report.take_batch_timings() == [] and report.take_dead_letter_reasons() == []
