"""The worker's one private pika hook must still be there, with the shape it was
written against: if a pika release moves it, these fail loudly instead of the worker
silently losing its write coalescing (or, worse, frames). That the hook is really
used on a live connection is tested in tests/broker/test_amqp_link.py."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pika
import pika.connection
from pika.adapters.base_connection import BaseConnection

from worker.amqp.connection import CoalescingConnection

REPO = Path(__file__).resolve().parents[1]
PIKA_SOURCE = Path(pika.__file__).parent
# A call of the emitter (not its definition, not a ``...emit_data()`` in a docstring).
EMIT_CALL = re.compile(r"\w\._adapter_emit_data\((?!\))")


def parameters(function: object) -> list[str]:
    assert callable(function)
    return list(inspect.signature(function).parameters)


def test_pika_is_pinned_to_the_minor_release_the_hook_was_checked_on() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if re.match(r"pika\b", d)]
    assert pins == ["pika>=1.4.4,<1.5"]
    major, minor, patch = (int(part) for part in pika.__version__.split(".")[:3])
    assert (1, 4, 4) <= (major, minor, patch) < (1, 5, 0)


def test_the_hooked_method_exists_with_the_expected_signature() -> None:
    target = pika.connection.Connection._output_marshaled_frames
    assert parameters(target) == ["self", "marshaled_frames"]
    assert parameters(BaseConnection._adapter_emit_data) == ["self", "data"]
    # Our class overrides it, and still reaches pika's real emitter.
    assert CoalescingConnection._output_marshaled_frames is not target
    assert CoalescingConnection._adapter_emit_data is BaseConnection._adapter_emit_data
    assert parameters(CoalescingConnection._output_marshaled_frames) == \
        ["self", "marshaled_frames"]
    assert issubclass(CoalescingConnection, pika.SelectConnection)


def test_every_frame_pika_sends_goes_through_the_hooked_method() -> None:
    """Frame order holds only if nothing reaches the transport another way: pika's
    two senders call the hook, and the emitter is called from nowhere else."""
    connection = pika.connection.Connection
    assert "self._output_marshaled_frames(" in inspect.getsource(connection._send_frame)
    assert "self._output_marshaled_frames(" in inspect.getsource(connection._send_message)
    callers = sorted(
        str(path.relative_to(PIKA_SOURCE)) for path in PIKA_SOURCE.rglob("*.py")
        if EMIT_CALL.search(path.read_text(encoding="utf-8")))
    assert callers == ["connection.py"]
    assert len(EMIT_CALL.findall(inspect.getsource(connection))) == 1
    assert EMIT_CALL.search(inspect.getsource(connection._output_marshaled_frames))


def test_no_pika_class_is_patched_globally() -> None:
    """The old module-level patch of the transport's ``_produce`` is gone."""
    from pika.adapters.utils import io_services_utils

    produce = io_services_utils._AsyncTransportBase._produce
    assert not hasattr(produce, "__wrapped__")
    assert produce.__module__ == "pika.adapters.utils.io_services_utils"


def test_the_stream_drop_reaches_pikas_own_termination_path() -> None:
    """``drop()`` (a stop and a handover hand unacked deliveries back in order) calls
    the private method pika itself uses when a heartbeat is missed: fail loudly if it
    moves, rather than leaving the worker unable to hand over."""
    target = pika.connection.Connection._terminate_stream
    assert parameters(target) == ["self", "error"]
    assert "self._terminate_stream(" in inspect.getsource(CoalescingConnection.drop)
