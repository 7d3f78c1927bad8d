"""pika's I/O services for the worker's connection: one connect failure reported the
way every other one is, and the delivery intake put in front of pika's protocol.

pika 1.4 connects in steps: a non-blocking TCP connect, then
``create_streaming_connection`` on the connected socket, which first checks
``sock.getpeername()``. A peer that accepts and at once resets (a broker restarting,
a load balancer with no backend, a network cut) can do so between the two steps;
``getpeername`` then fails and pika raises ``ValueError`` synchronously, out of its
own callback and out of the ioloop: the worker process died of a refused reconnect
(seen in CI, and reproduced in about one of ten cuts under load).

:class:`IOServices` is pika's own ``SelectorIOServicesAdapter`` with that one case
turned into what the interface promises: an asynchronous ``on_done(exception)``. The
connection workflow then fails the attempt like any refused connect
(``on_open_error_callback``) and the link backs off and retries. It overrides a
method of pika's public ``AbstractIOServices`` interface, which ``SelectConnection``
takes as ``custom_ioloop``; no private pika code is touched.

The same method is where the transport meets its protocol: with a sink, the protocol
pika's factory makes is wrapped in :class:`worker.amqp.intake.DeliveryIntake`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.utils.nbio_interface import AbstractIOReference
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter

from worker.amqp.intake import DeliveryIntake, DeliverySink


def reset_on_connect(error: ValueError) -> ConnectionResetError | None:
    """The reset behind pika's "Expected connected socket, but getpeername() failed"
    (raised while handling getpeername's OSError, so that is its context), or None
    for any other ValueError. A socket that had connected and is no longer connected
    was reset by its peer."""
    cause = error.__context__
    if not isinstance(cause, OSError):
        return None
    return ConnectionResetError(errno.ECONNRESET,
                                f"connection reset as it was made ({cause.strerror})")


class _FailureSoon(AbstractIOReference):  # type: ignore[misc]
    """A failure reported from the ioloop's next pass, as an asynchronous operation's
    would be; ``cancel()`` before then (the workflow aborting) reports nothing."""

    def __init__(self, services: SelectorIOServicesAdapter,
                 on_done: Callable[[BaseException], None], error: BaseException) -> None:
        self._on_done: Callable[[BaseException], None] | None = on_done
        self._error = error
        self._timer = services.call_later(0, self._report)

    def _report(self) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(self._error)

    def cancel(self) -> bool:
        if self._on_done is None:
            return False
        self._on_done = None
        self._timer.cancel()
        return True


class IOServices(SelectorIOServicesAdapter):  # type: ignore[misc]
    """``SelectorIOServicesAdapter`` whose streaming set-up never raises because the
    peer reset the socket first: that is a failed connection attempt, reported
    through ``on_done``. Every other error still raises, as in pika.

    With a ``sink``, the stream's deliveries for the sink's consumers reach it past
    pika's frame objects (:class:`worker.amqp.intake.DeliveryIntake`)."""

    def __init__(self, loop: Any, sink: DeliverySink | None = None) -> None:
        super().__init__(loop)
        self._sink = sink

    def create_streaming_connection(self, protocol_factory: Callable[[], Any],
                                    sock: socket.socket,
                                    on_done: Callable[[Any], None],
                                    ssl_context: Any = None,
                                    server_hostname: str | None = None) -> Any:
        sink = self._sink
        if sink is not None:
            pika_protocol = protocol_factory

            def protocol_factory() -> DeliveryIntake:
                return DeliveryIntake(pika_protocol(), sink)
        try:
            return super().create_streaming_connection(
                protocol_factory, sock, on_done, ssl_context=ssl_context,
                server_hostname=server_hostname)
        except ValueError as error:
            reset = reset_on_connect(error)
            if reset is None:
                raise  # a wrong argument, not the network: pika's own message stands
        # pika closed the socket (it owns it) before raising.
        return _FailureSoon(self, on_done, reset)


def blocking_connection(parameters: Any) -> Any:
    """``pika.BlockingConnection(parameters)`` for the command-line clients (watch,
    explain --live, demo): the same reset, raised by pika as ``ValueError``, becomes
    the ``ConnectionResetError`` their connection-error handling already catches."""
    try:
        return pika.BlockingConnection(parameters)
    except ValueError as error:
        reset = reset_on_connect(error)
        if reset is None:
            raise
        raise reset from error
