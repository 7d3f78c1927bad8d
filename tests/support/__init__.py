"""What every test and benchmark builds on: event streams (``streams``), the expected
updates and verdicts (``oracle``), and the broker and process harness (``harness``)."""
