"""``digitlab serve --workers N`` as real processes: connections spread over the workers, clean stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from digitlab.serve.workers import WorkerPool, bind_reuseport_sockets, reuse_port_supported

pytestmark = pytest.mark.skipif(not reuse_port_supported(), reason="SO_REUSEPORT spreading is Linux-only")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    pytest.fail("the server did not answer")


def _children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").glob("*")
            for c in (task / "children").read_text().split()}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _sockets(pids: set[int], port: int, state: str) -> dict[int, set[str]]:
    """Inodes of the TCP sockets on local ``port`` in ``state`` (01 established, 0A listening) held by each pid."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    held: dict[int, set[str]] = {}
    for pid in pids:
        held[pid] = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid].add(target[8:-1])
    return held


def _keep_alive_request(c: socket.socket) -> None:
    c.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = c.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200")


def _assert_all_end(pids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _start_two_workers() -> tuple[int, subprocess.Popen[bytes]]:
    """``digitlab serve --workers 2`` on a free port, in a process group of its own."""
    port = _free_port()
    cmd = [sys.executable, "-m", "digitlab", "serve", "--port", str(port), "--workers", "2",
           "--log-level", "warning"]
    return port, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_connections_spread_over_workers_and_sigterm_stops_all():
    """Keep-alive connections opened in a burst land on both workers (a shared socket gave ~all to one)."""
    port, proc = _start_two_workers()
    try:
        _healthy(port, proc)
        workers = {p for p in _children(proc.pid)
                   if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()}
        assert len(workers) == 2
        # each worker listens on a socket of its own (a shared one let one worker take every connection)
        listening = _sockets(workers, port, "0A")
        assert all(len(inodes) == 1 for inodes in listening.values()), listening
        assert len(set.union(*listening.values())) == 2, listening
        conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(32)]
        try:
            for c in conns:
                _keep_alive_request(c)
            counts = [len(inodes) for inodes in _sockets(workers, port, "01").values()]
            # the kernel hashes connections over the sockets: 32 split at worst 6/26 (chance ~1e-4)
            assert sum(counts) == 32 and min(counts) >= 6, counts
        finally:
            for c in conns:
                c.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert b"Traceback" not in out
        _assert_all_end(workers, 10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _until_both_serve(pids: set[int], timeout: float = 120) -> None:
    """Wait until both worker processes have loaded the model (ONNX Runtime mapped): uvicorn has taken
    over their signals by then (a worker still importing would print a KeyboardInterrupt traceback)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = 0
        for pid in pids:
            try:
                if ("resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()
                        and "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()):
                    ready += 1
            except OSError:
                pass
        if ready >= 2:
            return
        time.sleep(0.1)
    pytest.fail("the two workers did not both load the model")


def test_ctrl_c_and_kill_9_of_the_parent_end_the_workers():
    for how in ("ctrl-c", "kill-9"):
        port, proc = _start_two_workers()
        try:
            _healthy(port, proc)
            workers = _children(proc.pid)
            _until_both_serve(workers)  # a running server
            if how == "ctrl-c":  # the terminal signals the whole foreground process group
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.kill()
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == (0 if how == "ctrl-c" else -signal.SIGKILL), out
            assert b"Traceback" not in out, out
            deadline = time.monotonic() + 20
            while any(_alive(p) for p in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(_alive(p) for p in workers), how
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_pool_replaces_a_dead_worker_and_stops_on_a_failed_start(monkeypatch):
    from digitlab.serve.app import SETTINGS_ENV, ServeSettings

    monkeypatch.setenv(SETTINGS_ENV, ServeSettings(model="default").to_json())
    port = _free_port()
    config = {"app": "digitlab.serve.app:app_from_env", "factory": True, "log_level": "warning",
              "host": "127.0.0.1", "port": port}
    pool = WorkerPool(bind_reuseport_sockets("127.0.0.1", port, 1), config, startup_seconds=0.0)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(pool.run()), daemon=True)
    thread.start()
    try:
        _healthy(port)
        (first,) = pool.worker_pids()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while pool.worker_pids() in ([], [first]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.worker_pids() and pool.worker_pids() != [first]
        _healthy(port)  # the replacement serves on the same socket
    finally:
        pool.stop()
        thread.join(timeout=60)
    assert result == [0]

    # a name of two addresses: each worker listens on both (IPv6 only where the machine has it)
    family = {i[0] for i in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    port = _free_port()
    groups = bind_reuseport_sockets("localhost", port, 2)
    try:
        assert [len(g) for g in groups] == [len(family)] * 2
        assert {s.getsockname()[1] for g in groups for s in g} == {port}
    finally:
        for s in [s for g in groups for s in g]:
            s.close()

    # an app that cannot be built: the worker exits at start-up, the pool stops (no restart loop)
    bad = {**config, "app": "digitlab.serve.no_such_module:app"}
    assert WorkerPool(bind_reuseport_sockets("127.0.0.1", _free_port(), 2), bad).run() == 1


def test_ctrl_c_while_the_workers_start_stops_the_server():
    """Ctrl-C during start-up (the whole process group gets it) stops the parent and every worker."""
    for delay in (0.0, 0.5):
        port, proc = _start_two_workers()
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # "serving …": the parent is about to start the workers
            time.sleep(delay)
            workers = _children(proc.pid)
            os.killpg(proc.pid, signal.SIGINT)
            out, _ = proc.communicate(timeout=60)  # never lost: the server stops
            assert proc.returncode in (0, 130), out
            _assert_all_end(workers, 10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
