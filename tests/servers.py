"""Real servers for tests, bound to 127.0.0.1 on free ports, stopped by the test that started them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, alive=lambda: True) -> None:
    """Poll ``url`` until it answers 200; give up after ``timeout`` s or as soon as ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server behind {url} exited before it became healthy; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process group started with start_new_session=True."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def prefect_server(home: Path, env: dict[str, str]):
    """`prefect server start` on 127.0.0.1:<free port>; yields the API URL."""
    port = free_port()
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    server_env.update(
        PREFECT_HOME=str(home),
        # Create schedule runs quickly instead of once a minute.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
    )
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout=120)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop(proc)
        log.close()
