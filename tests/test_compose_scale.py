"""docker-compose.yml's ``scale`` profile (several workers, docs/several-workers.md):
PostgreSQL 15 with a pg_isready healthcheck and three workers on it, each waiting for
a healthy broker and database; the ``single`` profile is RabbitMQ and one SQLite worker
(that the two never mix: tests/test_packaging.py). (``docker compose config`` is not
available here: the file is read as YAML.)"""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.support.compose import services, started
from worker.settings import Settings

SCALE_WORKERS = ("worker-1", "worker-2", "worker-3")


def test_the_single_profile_is_rabbitmq_and_one_sqlite_worker() -> None:
    assert started({"single"}) == {"rabbitmq", "worker"}
    environment = services()["worker"]["environment"]
    assert "INBOX_RULES_STORE_URL" not in environment
    assert environment["INBOX_RULES_STATE_PATH"].endswith(".sqlite3")


def test_the_scale_profile_runs_three_workers_on_a_healthy_postgresql_15() -> None:
    found = services()
    postgres = found["postgres"]
    assert postgres["profiles"] == ["scale"]
    assert postgres["image"].startswith("postgres:15.")
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    ports = set()
    for name in SCALE_WORKERS:
        worker = found[name]
        assert worker["profiles"] == ["scale"], name
        assert worker["depends_on"] == {"rabbitmq": {"condition": "service_healthy"},
                                        "postgres": {"condition": "service_healthy"}}, name
        environment = worker["environment"]
        url = urlsplit(environment["INBOX_RULES_STORE_URL"])
        assert (url.scheme, url.hostname, url.path) == ("postgresql", "postgres",
                                                        "/" + postgres["environment"]
                                                        ["POSTGRES_DB"]), name
        assert url.username == postgres["environment"]["POSTGRES_USER"]
        assert url.password == postgres["environment"]["POSTGRES_PASSWORD"]
        # The settings every worker must agree on, and each one a valid setting.
        settings = Settings(AMQP_URL=environment["AMQP_URL"],
                            store_url=environment["INBOX_RULES_STORE_URL"],
                            partitions=environment["INBOX_RULES_PARTITIONS"],
                            member_lease=environment["INBOX_RULES_MEMBER_LEASE"])
        assert settings.partitions == 16
        assert worker["image"] == found["worker"]["image"]
        assert worker["stop_grace_period"] == found["worker"]["stop_grace_period"]
        assert "worker" in worker["networks"]["default"]["aliases"], \
            "Prometheus finds the workers by the name 'worker'"
        ports.update(worker["ports"])
    assert len(ports) == 3 and not ports & set(found["worker"]["ports"])
    assert "depends_on" not in found["prometheus"], \
        "Prometheus must start with the scale workers without pulling in the SQLite one"
