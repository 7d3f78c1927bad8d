"""The parts of the AsyncAPI document :mod:`contracts.asyncapi` writes: the names and
bindings they share (:mod:`.common`), the examples, the messages, the channels and the
operations, one module each."""
