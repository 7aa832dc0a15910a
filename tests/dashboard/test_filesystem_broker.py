"""The embedded broker never hands a worker a half-written message (which kills it)."""
from __future__ import annotations

import pytest
from kombu import Connection
from kombu.transport.virtual import Empty

from dashboard import broker


@pytest.fixture
def channel(tmp_path):
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    with Connection(transport=broker.Transport, transport_options=options) as connection:
        yield connection.default_channel


def test_a_message_being_written_is_invisible_to_a_reader_until_complete(channel, monkeypatch):
    seen = []
    real = broker.dumps

    def serialize_while_a_worker_polls(payload):
        try:  # the message's file exists by now (kombu's own channel has opened it here too)
            seen.append(channel._get("serve"))
        except Empty:
            seen.append("nothing yet")
        return real(payload)

    monkeypatch.setattr(broker, "dumps", serialize_while_a_worker_polls)
    channel._put("serve", {"body": "reconcile"})
    assert seen == ["nothing yet"]
    assert channel._get("serve") == {"body": "reconcile"}


def test_the_embedded_default_selects_it(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "CELERY_BROKER_URL": "filesystem://", "GANTRY_VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3"}
    code = "from dashboard.celery import app; c = app.connection_for_write(); print(type(c.transport).__module__, type(c.transport).__name__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["dashboard.broker", "Transport"], out.stderr[-2000:]
