"""JAX's multi-process launch: ``python -m transferkit_flax.launch N <arguments...>``
runs ``python -m transferkit <arguments...>`` in N processes that find each other
through a coordinator on this machine, as ``jax.distributed.initialize`` expects. The
first process to fail stops the others. Imports no JAX."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

COORDINATOR = "TRANSFERKIT_JAX_COORDINATOR"
NUM_PROCESSES = "TRANSFERKIT_JAX_NUM_PROCESSES"
PROCESS_ID = "TRANSFERKIT_JAX_PROCESS_ID"


def launcher(nproc: int) -> list[str]:
    return [sys.executable, "-m", "transferkit_flax.launch", str(nproc)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    nproc, command = int(argv[0]), [sys.executable, "-m", "transferkit", *argv[1:]]
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, COORDINATOR: address, NUM_PROCESSES: str(nproc)}
    procs = [subprocess.Popen(command, env={**env, PROCESS_ID: str(i)}) for i in range(nproc)]
    first_failure = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            first_failure = next((c for c in codes if c not in (None, 0)), 0)
            if first_failure or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return first_failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
