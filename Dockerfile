# The inbox-rules worker. durable-rules 2.0.28 ships only an sdist with C/C++ code:
# build it in a builder stage that has a compiler, run on a slim image without one.
FROM python:3.12-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY rules ./rules
COPY worker ./worker
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INBOX_RULES_STATE_PATH=/var/lib/inbox-rules/state.sqlite3
RUN useradd --system --uid 10001 --home-dir /var/lib/inbox-rules --create-home inbox-rules
USER inbox-rules
VOLUME ["/var/lib/inbox-rules"]
# SIGTERM (docker stop) finishes the batch in hand, commits, acks and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["inbox-rules"]
CMD ["run"]
