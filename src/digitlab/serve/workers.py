"""``digitlab serve --workers N``: N server processes on one port, each with its own listening socket.

uvicorn's own ``workers=N`` shares one listening socket between its processes. A keep-alive load
(a browser, a proxy, a load tester) opens its connections in a burst, and the first worker to wake
accepts every queued connection in one go: measured with 16 connections, one worker served all
requests and the other sat idle (1 core busy out of 2). Here each worker gets its own socket bound
to the same address with ``SO_REUSEPORT``, and the Linux kernel spreads new connections over them
(by a hash of the client's address and port). Only sockets of the same user can join such a group.
Each worker runs uvicorn's fastest pieces where installed (``loop="auto"``: uvloop; the
httptools-based protocol of :mod:`digitlab.serve.protocol`), else asyncio and h11.

The parent process binds the sockets (a port in use is an error before any worker starts), starts
the workers (``spawn``: each loads the model itself), replaces a worker that dies after it has
started (on the same socket), and on SIGINT (Ctrl-C) or SIGTERM stops them all (each finishes its
requests in flight: uvicorn's graceful shutdown) and returns. A worker that fails while starting
(e.g. the model cannot be loaded) stops the server with an error rather than a restart loop.
Workers end when the parent ends, even on ``kill -9`` of the parent. Only on Linux
(:func:`reuse_port_supported`); elsewhere the command falls back to uvicorn's shared socket.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

__all__ = ["STARTUP_SECONDS", "WorkerPool", "bind_reuseport_sockets", "reuse_port_supported"]

STARTUP_SECONDS = 10.0
"""A worker that exits sooner than this after its start failed to start (no restart loop: the server stops)."""
BACKLOG = 2048  # as uvicorn
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker that could not start


def reuse_port_supported() -> bool:
    """True where ``SO_REUSEPORT`` spreads connections over the sockets (Linux 3.9+)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_reuseport_sockets(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """For each of ``count`` workers, its listening sockets on ``host:port`` with ``SO_REUSEPORT``.

    One socket per address ``host`` resolves to (``localhost`` may be both 127.0.0.1 and ::1, as
    uvicorn serves it with one worker).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    opened: list[socket.socket] = []
    try:
        per_worker = []
        for _ in range(count):
            mine = []
            for family, address in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                opened.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and len(addresses) > 1:  # as asyncio: v4 has its own socket
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.set_inheritable(True)
                mine.append(sock)
            per_worker.append(mine)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return per_worker


def _exit_with_parent(conn: Connection) -> None:
    """In a worker: wait for the parent's end of the pipe to close, then shut down gracefully."""
    try:
        conn.recv()
    except (EOFError, OSError):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(sockets: list[socket.socket], config: dict[str, Any], conn: Connection) -> None:
    """A worker process: one uvicorn server on its own sockets."""
    import uvicorn

    threading.Thread(target=_exit_with_parent, args=(conn,), daemon=True).start()
    cfg = uvicorn.Config(**config)
    cfg.configure_logging()
    server = uvicorn.Server(cfg)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent stops us anyway
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)


@dataclass
class _Worker:
    sockets: list[socket.socket]
    process: BaseProcess | None = None
    conn: Connection | None = None  # the parent's end: closed (by exit, even kill -9) = stop
    started_at: float = 0.0


@dataclass
class WorkerPool:
    """Run ``len(sockets)`` uvicorn workers, worker *i* accepting on the sockets ``sockets[i]``.

    ``config``: keyword arguments of :class:`uvicorn.Config` (an import string and ``factory=True``
    for the app: each worker builds its own). A worker that ends within ``startup_seconds`` of its
    start, or with uvicorn's start-up failure status, stops the pool (no restart loop); one that
    ends later is replaced, on the same socket (connections queued meanwhile are kept).
    """

    sockets: list[list[socket.socket]]
    config: dict[str, Any]
    startup_seconds: float = STARTUP_SECONDS
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[_Worker] = field(default_factory=list)

    def _start(self, worker: _Worker) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(worker.sockets, self.config, child_end),
                              name="digitlab-serve-worker")
        # A Ctrl-C that reaches a worker still importing (the terminal signals the whole process group)
        # makes it print a KeyboardInterrupt traceback; nothing else comes of it: the parent stops every
        # worker. Changing the parent's SIGINT disposition around the start to spare the worker would risk
        # losing a Ctrl-C meant for the parent.
        process.start()
        child_end.close()
        worker.process, worker.conn, worker.started_at = process, parent_end, time.monotonic()

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.process.pid for w in list(self._workers)
                if w.process is not None and w.process.pid is not None and w.process.is_alive()]

    def stop(self) -> None:
        """Ask :meth:`run` to stop the workers and return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (or :meth:`stop`): 0, or 1 when a worker failed to start."""
        workers = self._workers = [_Worker(socks) for socks in self.sockets]
        previous = {}
        if threading.current_thread() is threading.main_thread():  # (signals reach only the main thread)
            previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            for w in workers:
                self._start(w)
            while not self._stop.is_set():
                wait([w.process.sentinel for w in workers if w.process is not None], timeout=0.25)
                for w in workers:
                    assert w.process is not None
                    if w.process.is_alive() or self._stop.is_set():
                        continue
                    code = w.process.exitcode
                    if code == STARTUP_FAILURE or time.monotonic() - w.started_at < self.startup_seconds:
                        print(f"digitlab: error: worker process {w.process.pid} failed to start (exit status "
                              f"{code}); stopping the server", file=sys.stderr)
                        status = 1
                        self._stop.set()
                        break
                    print(f"digitlab: warning: worker process {w.process.pid} died (exit status {code}); "
                          "starting another", file=sys.stderr)
                    if w.conn is not None:
                        w.conn.close()
                    self._start(w)
        finally:
            self._shutdown(workers)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    @staticmethod
    def _shutdown(workers: list[_Worker], grace: float = 30.0) -> None:
        """SIGTERM every worker (graceful: requests in flight are answered), SIGKILL after ``grace`` s."""
        for w in workers:
            if w.process is not None and w.process.is_alive():
                w.process.terminate()
        deadline = time.monotonic() + grace
        for w in workers:
            if w.process is not None:
                w.process.join(max(0.0, deadline - time.monotonic()))
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join()
            if w.conn is not None:
                w.conn.close()
            for sock in w.sockets:
                sock.close()
