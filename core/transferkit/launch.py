"""``transferkit fit --nproc N``: start N processes under the framework's own launcher
(``torchrun`` for PyTorch and Hugging Face, ...), each running the same fit with
``strategy = "ddp"``. Everything that can be checked is checked here, before anything
launches; the run description travels to the processes as a TOML file.

For frameworks whose processes find each other through a coordinator address (JAX's
``jax.distributed.initialize``, Keras's ``keras.distribution.initialize``), this module
is also the launcher: ``python -m transferkit.launch N <arguments...>`` runs
``python -m transferkit <arguments...>`` in N processes, each told the coordinator, the
number of processes and its own index (:func:`coordinates`). The first process to fail
stops the others. Imports no framework."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: set in the launched processes, so that they fit rather than launch again
CHILD_ENV = "TRANSFERKIT_LAUNCHED"
#: what :func:`main` tells each process: the coordinator, their number, its index
COORDINATOR = "TRANSFERKIT_COORDINATOR"
NUM_PROCESSES = "TRANSFERKIT_NUM_PROCESSES"
PROCESS_ID = "TRANSFERKIT_PROCESS_ID"


def wanted(cfg: dict[str, Any]) -> bool:
    """Whether this ``transferkit fit`` should launch processes rather than fit."""
    n = cfg.get("nproc")  # a wrong type is reported by the run description's check
    return isinstance(n, int) and n > 1 and not os.environ.get(CHILD_ENV)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        items = (f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    # strings (any character), numbers and booleans read the same in TOML
    return json.dumps(value, ensure_ascii=False)


def launch(cfg: dict[str, Any]) -> int:
    """Check the run, then start ``cfg["nproc"]`` processes of it; returns their exit
    status (non-zero when any process failed: the launcher stops the others)."""
    from . import freeze
    from .builder import _spec
    from .plugins import registry
    from .runconfig import _check_out, _regularizer, validate_run_description
    from .scaling import check, check_nproc

    validate_run_description(cfg)
    if not cfg.get("backbone") or not cfg.get("data"):
        raise ConfigError("`transferkit fit` needs backbone and data (--backbone, --data)")
    if cfg.get("strategy") not in (None, "ddp"):
        raise ConfigError(f"--nproc runs strategy 'ddp'; got strategy {cfg['strategy']!r}")
    spec = _spec(cfg["backbone"])
    framework = registry().framework(spec.framework)
    framework.ensure_installed()
    check_nproc(cfg["nproc"], framework)
    check(framework, cfg.get("precision"), "ddp")
    policy = freeze.from_name(cfg.get("freeze", "full"), **cfg.get("freeze_options", {}))
    if policy.peft is not None:
        freeze.check_peft(framework, policy.peft["kind"])
    _regularizer({"regularizer": "none", **cfg})
    _check_out(cfg.get("out", "runs/model"))
    run = {k: v for k, v in cfg.items() if v is not None and k != "nproc"}
    run["strategy"] = "ddp"
    with tempfile.TemporaryDirectory(prefix="transferkit-launch-") as tmp:
        description = Path(tmp) / "fit.toml"
        description.write_text("".join(f"{_toml(k)} = {_toml(v)}\n" for k, v in run.items()))
        command = [*framework.launcher(cfg["nproc"]), "fit", "--config", str(description)]
        print(f"launching {cfg['nproc']} processes: {' '.join(command)}", file=sys.stderr)
        env = {**os.environ, CHILD_ENV: "1"}
        return subprocess.run(command, env=env, check=False).returncode


# --- the coordinator launcher (``python -m transferkit.launch N ...``) ----------------
def group_launcher(nproc: int) -> list[str]:
    """The command that starts ``nproc`` coordinated processes (:func:`main`)."""
    return [sys.executable, "-m", "transferkit.launch", str(nproc)]


def coordinates() -> tuple[str, int, int] | None:
    """In a process :func:`main` started: (coordinator address, number of processes,
    this process's index); None elsewhere."""
    if COORDINATOR not in os.environ:
        return None
    return os.environ[COORDINATOR], int(os.environ[NUM_PROCESSES]), int(os.environ[PROCESS_ID])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    """Run ``python -m transferkit argv[1:]`` in ``argv[0]`` processes; returns 0 when all
    succeed, else the exit status of the first that failed (the others are stopped)."""
    nproc, command = int(argv[0]), [sys.executable, "-m", "transferkit", *argv[1:]]
    env = {**os.environ, COORDINATOR: f"127.0.0.1:{free_port()}", NUM_PROCESSES: str(nproc)}
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
