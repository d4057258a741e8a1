"""Two CPU processes (gloo) for a test, set up as ``accelerate.debug_launcher`` sets them up, but started with
spawn instead of fork on a machine with a GPU: there autograd starts a thread per device at its first backward
pass, even a CPU one, and a forked child of such a process cannot use autograd."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch
from accelerate.utils import PrepareForLaunch, patch_environment
from torch.multiprocessing import start_processes


def launch_cpu_processes(function: Callable, args: tuple = (), num_processes: int = 2) -> None:
    """Run ``function(*args)`` in ``num_processes`` CPU processes (fixed rendezvous port 29500)."""
    start_method = "spawn" if torch.cuda.is_available() else "fork"  # fork: ~2 s; spawn re-imports torch
    # A file in a folder of its own: torch's FileStore deletes it once every process is done with it.
    with tempfile.TemporaryDirectory() as folder, patch_environment(
        world_size=num_processes,
        master_addr="127.0.0.1",
        master_port="29500",
        accelerate_mixed_precision="no",
        accelerate_debug_rdv_file=os.path.join(folder, "rendezvous"),
        accelerate_use_cpu="yes",
        gloo_socket_ifname="lo",
    ):
        start_processes(PrepareForLaunch(function, debug=True), args=args, nprocs=num_processes, start_method=start_method)
