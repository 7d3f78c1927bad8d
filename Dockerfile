# The inbox-rules worker. durable-rules 2.0.28 ships only an sdist with C/C++ code:
# build it in a builder stage that has a compiler, run on a slim image without one.
# Both stages on one exact tag: Python 3.12.14 on Debian 12 (bookworm), the Debian CI
# builds durable-rules on (its C code is untested with trixie's newer compiler). Move
# both FROM lines together.
FROM python:3.12.14-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY contracts ./contracts
COPY rules ./rules
COPY worker ./worker
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir .

FROM python:3.12.14-slim-bookworm
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INBOX_RULES_STATE_PATH=/var/lib/inbox-rules/state.sqlite3
RUN useradd --system --uid 10001 --home-dir /var/lib/inbox-rules --create-home inbox-rules
USER inbox-rules
VOLUME ["/var/lib/inbox-rules"]
# Liveness: the worker's loop still turns (GET /healthz on INBOX_RULES_HTTP_PORT; 503 or
# no answer raises, so the exit status says it). The image has Python but no curl. Port
# 0 turns the worker's HTTP off: nothing to ask, so the check passes (a dead worker
# stops the container anyway: it is PID 1). 0.0.0.0, the default bind, is asked on
# the loopback.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = int(os.environ.get('INBOX_RULES_HTTP_PORT') or 9464); host = os.environ.get('INBOX_RULES_HTTP_HOST') or '0.0.0.0'; port == 0 or urllib.request.urlopen('http://%s:%d/healthz' % ('127.0.0.1' if host == '0.0.0.0' else host, port), timeout=3)"]
# SIGTERM (docker stop) finishes the batch in hand, commits, acks and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["inbox-rules"]
CMD ["run"]
