"""How the DVC pipeline runs a stage notebook: papermill, with the person at the console in mind.

``execute`` runs a notebook with papermill (``papermill.execute_notebook``) and writes the
executed copy, like the ``papermill`` command, and in addition:

- streams what the cells print to the console while they run (papermill's ``stdout_file`` /
  ``stderr_file``; tables and figures stay in the executed notebook), so a long stage shows
  which run of how many it is on and its progress bars with time estimates;
- thins the progress bars for a log (``TQDM_MININTERVAL``: one update every few seconds, not
  every step; the executed notebook stays small as well);
- starts the kernel over IPC sockets instead of TCP, so nothing listens on a port and ipykernel
  has no reason to warn that it is "running over TCP without encryption";
- starts in a third of a second instead of one and a half: nbformat's jsonschema imports
  ``rfc3987_syntax`` when it is installed, which builds a grammar (0.9 s on 2 cores, at every
  one of the pipeline's stages) for an IRI format check no notebook schema uses.

``python -m mmpd_core.cli notebook IN OUT -p name value`` is the command line (``dvc.yaml``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.modules.setdefault("rfc3987_syntax", None)  # see above: jsonschema skips the IRI check

import papermill  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

PROGRESS_INTERVAL_S = "10"  # seconds between progress-bar updates in a pipeline log


class IPCKernelManager(KernelManager):
    """A local kernel on IPC (unix-socket) transport."""

    def __init__(self, **kwargs):
        kwargs.setdefault("transport", "ipc")
        super().__init__(**kwargs)


def execute(notebook: str | Path, output: str | Path, parameters: dict | None = None) -> Path:
    """Run ``notebook`` with ``parameters`` into ``output`` (see the module docstring)."""
    os.environ.setdefault("TQDM_MININTERVAL", PROGRESS_INTERVAL_S)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters or {},
        kernel_name="python3",
        cwd=".",
        progress_bar=False,
        stdout_file=sys.stdout,
        stderr_file=sys.stderr,
        kernel_manager_class=f"{__name__}.IPCKernelManager",
    )
    print(f"  {notebook} done in {time.perf_counter() - start:.0f} s -> {output}", flush=True)
    return Path(output)
