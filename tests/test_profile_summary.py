"""The benchmark's py-spy summary: the figures the speed work is steered by (how long the
ioloop waits, where its busy time goes) must come from the main thread alone, however
many other threads the worker runs."""

from __future__ import annotations

from benchmarks.compare import summarize

LOOP = ("_run_module_as_main (<frozen runpy>:198);Worker.run (worker/service.py:84);"
        "PollPoller.poll (pika/adapters/select_connection.py:1259)")
RECEIVE = (f"{LOOP};Connection._on_data_available (pika/connection.py:2054);"
           "AmqpLink._on_message (worker/amqp.py:349);Driver.on_delivery (worker/driver.py:313)")
RAW = "\n".join([
    # main thread: 50 idle in poll, 30 evaluating, 20 decoding frames
    f"thread (0x1): MainThread;{LOOP} 50",
    f"thread (0x1): MainThread;{RECEIVE};Step._one (worker/pipeline.py:205);"
    "Categoriser.handle (worker/domain/categoriser.py:90) 30",
    f"thread (0x1): MainThread;{LOOP};Connection._on_data_available (pika/connection.py:2054);"
    "decode_frame (pika/frame.py:244) 20",
    # the commit thread: 25 committing, 75 waiting for work; the HTTP thread: idle
    "thread (0x2): inbox-rules-commit;ThreadedCommitter._run (worker/committer.py:76);"
    "SqliteStore.commit (worker/store/sqlite.py:481) 25",
    "thread (0x2): inbox-rules-commit;ThreadedCommitter._run (worker/committer.py:71) 75",
    "thread (0x3): inbox-rules-http;BaseServer.serve_forever (socketserver.py:233) 100",
])


def test_idle_and_busy_shares_are_the_main_threads() -> None:
    text = summarize(RAW, "worker, test")
    assert "main thread: 100 samples" in text
    assert "idle (ioloop waiting in poll): 50.0% of wall time" in text
    assert "busy (running, or waiting for a core or the GIL): 50.0%" in text
    assert "commit thread: in a store commit (SQL, fsync, waits for the GIL) 25.0%" in text


def test_busy_time_goes_to_the_innermost_known_step() -> None:
    text = summarize(RAW, "worker, test")
    phases = text.split("by phase")[1].split("\n\n")[0]
    assert "60.0%  rules + state + diff (domain)" in phases
    assert "40.0%  pika receive + frame decoding" in phases
    # Functions of other threads never enter the main thread's tables.
    assert "serve_forever" not in text
    assert "ThreadedCommitter" not in text
