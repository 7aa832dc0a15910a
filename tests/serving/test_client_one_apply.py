"""RayServeClient applies one model at a time per process: an apply abandoned past its bound
(call_with_timeout leaves it running) makes the next one wait and time out — Serve unavailable for
that tick — instead of racing it and failing the model (the fault tests saw that race)."""
from __future__ import annotations

import threading
import time

import pytest

from serving.cluster import RayServeClient
from serving.cluster.connection import ServeUnavailable, call_with_timeout


def test_a_second_apply_waits_for_one_left_running_and_times_out_instead_of_racing_it(monkeypatch):
    running, most = [], []
    release = threading.Event()

    def slow_apply(self, model_key, config, previous, *, secrets):
        running.append(model_key)
        most.append(len(running))
        release.wait(10)
        running.remove(model_key)

    monkeypatch.setattr(RayServeClient, "_apply_model", slow_apply)
    client = RayServeClient()
    with pytest.raises(ServeUnavailable):
        call_with_timeout(client.apply_model, "a", {}, timeout_s=0.2, what="apply_model")  # abandoned, still running
    with pytest.raises(ServeUnavailable):
        call_with_timeout(client.apply_model, "b", {}, timeout_s=0.5, what="apply_model")
    assert most == [1], "the second apply ran beside the abandoned one"

    release.set()
    time.sleep(0.2)  # the abandoned one ends; the waiting one runs alone after it
    deadline = time.monotonic() + 5
    while running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert max(most) == 1
