"""The broker side: everything that speaks AMQP, and nothing that knows an event.

- :mod:`worker.amqp.link`: :class:`~worker.amqp.link.AmqpLink`, the real
  :class:`worker.link.Link` (connection, channels, consume, publish, confirms, reconnects).
- :mod:`worker.amqp.connection`: the connection's parameters (TLS) and the pika
  connection that writes each ioloop pass in one piece.
- :mod:`worker.amqp.io`: the connection's I/O (pika's ioloop, with the intake plugged in).
- :mod:`worker.amqp.intake`: deliveries read straight off the byte stream.
- :mod:`worker.amqp.frames`, :mod:`worker.amqp.properties`: publishes marshalled in one piece.
- :mod:`worker.amqp.topology`: the exchanges, queues and bindings the service declares.

The driver never imports this package: it sees only the :class:`worker.link.Link` protocol.
"""
