"""A category update's publish frames: pika's way against the worker's, in one run.

    python -m benchmarks.publish_frames [--updates 20000] [--rounds 5]

pika's way is what ``Channel.basic_publish`` has ``Connection._send_message`` do: a
``spec.Basic.Publish``, then ``frame.Method``, ``frame.Header`` (with pika's
``BasicProperties``) and ``frame.Body`` objects, each marshalled. The worker's is
:class:`worker.amqp.frames.PublishFrames` with the spliced property encoding of
:mod:`worker.amqp.properties`. Both get the same updates (50 accounts, 2 agents: the
routing keys repeat as they do in the default stream) and must give the same bytes;
rounds are interleaved and the best of each kept (noise only slows a round down).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from pika import frame, spec

from worker.amqp.frames import FRAME_OVERHEAD, PublishFrames
from worker.amqp.properties import encoded_properties, outgoing_properties
from worker.link import Outgoing

BODY_MAX = 131_072 - FRAME_OVERHEAD
Encode = Callable[[Outgoing], bytes]


def updates(count: int) -> list[Outgoing]:
    body = b'{"update_id":"' + b"0" * 32 + b'","categories":["all","new"]' + b" " * 250 + b"}"
    return [Outgoing("inbox.categories", f"acc-{n % 50}.ag-{n % 2}", body, f"{n:032x}",
                     None, True, "application/json", "category.update")
            for n in range(count)]


def pikas(message: Outgoing) -> bytes:
    method = spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key,
                                mandatory=True)
    return b"".join((frame.Method(1, method).marshal(),
                     frame.Header(1, len(message.body), outgoing_properties(message)).marshal(),
                     frame.Body(1, message.body).marshal()))


def workers() -> Encode:
    frames = PublishFrames()

    def encode(message: Outgoing) -> bytes:
        return frames.encode(1, message.exchange, message.routing_key,
                             encoded_properties(message), message.body, BODY_MAX)[0]

    return encode


def best_seconds(encode: Encode, messages: list[Outgoing]) -> float:
    started = time.perf_counter()
    for message in messages:
        encode(message)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    messages = updates(args.updates)
    ours = workers()
    if any(pikas(m) != ours(m) for m in messages[:200]):
        raise SystemExit("the two ways give different bytes")
    timings: dict[str, float] = {"pika": float("inf"), "worker": float("inf")}
    for _ in range(args.rounds):
        timings["pika"] = min(timings["pika"], best_seconds(pikas, messages))
        timings["worker"] = min(timings["worker"], best_seconds(ours, messages))
    per = {name: seconds / len(messages) * 1e6 for name, seconds in timings.items()}
    print(f"{len(messages)} updates, best of {args.rounds} interleaved rounds")
    print(f"pika's frame objects   {per['pika']:6.2f} us per publish")
    print(f"worker.amqp.frames     {per['worker']:6.2f} us per publish")
    print(f"pika/worker            {per['pika'] / per['worker']:6.2f}x")


if __name__ == "__main__":
    main()
