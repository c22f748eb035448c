"""Load test of ``digitlab serve`` with a real HTTP load tool (``hey``), on 127.0.0.1.

Starts ``digitlab serve --workers N`` on a free port, waits for ``/api/health``, warms it up,
then has ``hey`` POST the same multipart picture upload ``--requests`` times at
``--concurrency``, and prints JSON: requests/s, latency percentiles (p50/p95/p99 ms),
errors (non-2xx answers and socket errors), the server's CPU time per request and per
process (with N workers, N similar figures mean the connections were spread over them), the
server's resident memory (all its processes, from /proc) before and after, the commands and
the machine. The server is stopped at the end.

    python scripts/load_test.py                               # 2 workers, 4000 requests, concurrency 16
    python scripts/load_test.py --workers 1 --requests 1000
    python scripts/load_test.py --endpoint /api/number --picture page.png

Target: >= 400 requests/s at concurrency 16 with 0 errors and p99 <= 100 ms on a
2-core machine. Figures worth quoting need a quiet machine (the load average is recorded).
Needs ``hey`` (Debian package ``hey``) and the digitlab[serve] extra.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from digitlab.utils import machine_summary

BOUNDARY = "digitlab-load-test-boundary-7MA4YWxkTrZu0gW"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _picture() -> tuple[bytes, str]:
    """A typical upload: a 112×112 PNG of a drawn 7, dark on white."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (112, 112), 255)
    ImageDraw.Draw(img).line([(30, 28), (82, 28), (50, 92)], fill=0, width=9, joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), "112×112 grey PNG of a drawn 7"


def _multipart(data: bytes, filename: str) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += _children(p)
    return seen


def _rss_mib(pid: int) -> dict[str, object]:
    """VmRSS of each process of the server tree and their sum, in MiB."""
    per = {}
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    per[p] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return {"total": round(sum(per.values()), 1), "processes": len(per),
            "each": [round(v, 1) for v in per.values()]}


def _cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds used so far by each process of the server tree (from /proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server did not answer {url}/api/health within {timeout:g} s")


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, int(round(q / 100 * len(sorted_ms) + 0.5)) - 1))  # nearest rank
    return sorted_ms[k]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: its own process group
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="digitlab serve --workers")
    ap.add_argument("--requests", type=int, default=4000, help="requests sent (hey -n)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight (hey -c)")
    ap.add_argument("--warmup", type=int, default=200, help="requests sent first and not counted")
    ap.add_argument("--model", default="default", help="digitlab serve --model")
    ap.add_argument("--endpoint", default="/api/predict", help="/api/predict or /api/number")
    ap.add_argument("--picture", default=None, help="picture to upload (default: a generated 112×112 PNG)")
    ap.add_argument("--hey", default=shutil.which("hey") or "/usr/bin/hey", help="path of the hey binary")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for digitlab serve (repeatable), e.g. --serve-arg=--max-decodes=4")
    args = ap.parse_args()
    if not Path(args.hey).exists():
        raise SystemExit(f"hey not found at {args.hey}: apt-get install hey")
    if args.requests < args.concurrency:
        raise SystemExit("--requests must be at least --concurrency")
    # hey gives each of its -c workers n/c requests (rounded down): send exactly what is counted
    args.requests -= args.requests % args.concurrency

    if args.picture:
        data, what = Path(args.picture).read_bytes(), Path(args.picture).name
    else:
        data, what = _picture()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    serve_cmd = [sys.executable, "-m", "digitlab", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--model", args.model, "--workers", str(args.workers), "--log-level", "warning", *args.serve_arg]
    with tempfile.TemporaryDirectory(prefix="digitlab-load-") as tmp:
        body = Path(tmp) / "body.bin"
        body.write_bytes(_multipart(data, "picture.png"))
        log = open(Path(tmp) / "server.log", "w+b")  # noqa: SIM115 - read back on failure
        proc = subprocess.Popen(serve_cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(url, proc, timeout=120)
            with urllib.request.urlopen(url + "/api/models", timeout=10) as r:
                info = json.loads(r.read())["models"][0]

            def hey(n: int, csv_out: bool) -> tuple[list[str], subprocess.CompletedProcess[str], float]:
                cmd = [args.hey, "-n", str(n), "-c", str(args.concurrency), "-m", "POST",
                       "-T", f"multipart/form-data; boundary={BOUNDARY}", "-D", str(body)]
                cmd += ["-o", "csv"] if csv_out else []
                cmd.append(url + args.endpoint)
                t0 = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
                return cmd, done, time.perf_counter() - t0

            if args.warmup:
                hey(max(args.warmup, args.concurrency), csv_out=False)
            time.sleep(0.5)
            rss_before = _rss_mib(proc.pid)
            load_before = os.getloadavg()
            cpu_before = _cpu_seconds(proc.pid)
            hey_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            cmd, done, wall = hey(args.requests, csv_out=True)
            cpu_after = _cpu_seconds(proc.pid)
            cpu_each = sorted((cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after), reverse=True)
            cpu_used = sum(cpu_each)
            hey_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            hey_cpu = (hey_after.ru_utime + hey_after.ru_stime) - (hey_before.ru_utime + hey_before.ru_stime)
            load_after = os.getloadavg()
            rss_after = _rss_mib(proc.pid)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            _stop(proc)
            log.close()
    if done.returncode != 0:
        raise SystemExit(f"hey failed ({done.returncode}): {done.stderr.strip()}")

    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    latencies = sorted(float(r["response-time"]) * 1000.0 for r in rows)
    status: dict[str, int] = {}
    for r in rows:
        status[r["status-code"]] = status.get(r["status-code"], 0) + 1
    non_2xx = sum(n for code, n in status.items() if not code.startswith("2"))
    socket_errors = args.requests - len(rows)  # hey's CSV lists only requests that got an answer
    span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=wall)
    shown_cmd = [("hey" if c == args.hey else c) for c in cmd]
    shown_cmd[shown_cmd.index("-D") + 1] = "body.bin"
    print(json.dumps({
        "requests": args.requests,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "endpoint": args.endpoint,
        "requests_per_second": round(len(rows) / span, 1),
        "latency_ms": {"p50": round(_percentile(latencies, 50), 2), "p95": round(_percentile(latencies, 95), 2),
                       "p99": round(_percentile(latencies, 99), 2),
                       "mean": round(statistics.fmean(latencies), 2) if latencies else None,
                       "max": round(latencies[-1], 2) if latencies else None},
        "errors": {"total": non_2xx + socket_errors, "non_2xx": non_2xx, "socket": socket_errors},
        "status_codes": status,
        "duration_seconds": round(span, 3),
        # CPU time the server spent per request (all its processes): hardly changed by other load
        "server_cpu_ms_per_request": round(1000.0 * cpu_used / max(1, len(rows)), 3),
        # per server process, busiest first: with --workers N, N similar figures mean all workers got work
        "server_cpu_seconds_by_process": [round(c, 2) for c in cpu_each],
        "load_tool_cpu_ms_per_request": round(1000.0 * hey_cpu / max(1, len(rows)), 3),
        "server_rss_mib": {"before": rss_before, "after": rss_after},
        "model": {k: info.get(k) for k in ("model", "backend", "source")},
        "picture": {"what": what, "bytes": len(data)},
        "command": {"server": " ".join(["digitlab", *serve_cmd[3:]]),
                    "load": " ".join(shown_cmd),
                    "script": " ".join(["python", "scripts/load_test.py", *sys.argv[1:]])},
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "machine": machine_summary(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
