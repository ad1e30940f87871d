"""Running a test's worker script as separate processes over ``torch.distributed`` (gloo, CPU): the
oracle is the same script run as one process. Used by the tests and their ``dist_*_worker.py``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> str:
    """A TCP port nobody listens on now (for the process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def two_ranks_and_one(worker: str, out: Path, timeout: float = 300, args: Sequence[str] = ()) -> None:
    """Run ``tests/<worker> OUT RANK WORLD PORT [ARGS...]`` as two gloo ranks (writing
    ``OUT/two.<rank>``) and then as one process (``OUT/one.0``); a rank that fails fails the test
    with its output."""
    script = str(HERE / worker)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, script, str(out / "two"), str(r), "2", port, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for proc in procs:
        text, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, text
    subprocess.run([sys.executable, script, str(out / "one"), "0", "1", port, *args], check=True, timeout=timeout)


def start(rank: int, world: int, port: str) -> None:
    """In a worker: join the gloo process group (nothing for one process), one torch thread."""
    import torch
    import torch.distributed as dist

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def finish(world: int) -> None:
    """In a worker: wait for every rank, leave the group and exit at once (a teardown abort under
    load was seen otherwise)."""
    import torch.distributed as dist

    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)
