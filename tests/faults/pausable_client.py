"""The real Ray Serve client with one hook at its edge, for the worker-kill fault test: while the
pause file exists, an apply — after the real apply has reached Serve — writes its process id into
that file and waits there, so the test can SIGKILL the worker at the worst moment: Serve has the
change, the database has not recorded it yet. It waits inside the client's one-apply-at-a-time
lock, as a slow apply would."""
from __future__ import annotations

import os
import time
from pathlib import Path

from serving.cluster import RayServeClient

# Below GANTRY_SERVE_CALL_TIMEOUT_S (the cluster fixture sets 45 s): a pause that outlived the
# call's bound would be a timeout, not a crash.
PAUSE_S = 15.0


class PausableApplyClient(RayServeClient):
    def _apply_model(self, *args, **kwargs) -> None:
        super()._apply_model(*args, **kwargs)
        pause = Path(os.environ.get("GANTRY_FAULTS_PAUSE_FILE", "/nonexistent"))
        if pause.exists():
            pause.write_text(str(os.getpid()))
            deadline = time.monotonic() + PAUSE_S
            while pause.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
