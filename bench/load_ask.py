"""Load test of ``POST /ask``: throughput, latency percentiles, errors and server memory.

    .venv/bin/python bench/load_ask.py --serve --concurrency 32 64 --duration 60
    .venv/bin/python bench/load_ask.py --serve --concurrency 1 --duration 30 --crafted 16
    .venv/bin/python bench/load_ask.py --url http://127.0.0.1:8000 --concurrency 8   # a running server

``--serve`` starts ``rag serve`` itself (seeds/ and index/ of the repository, a free port)
so that the server's resident memory (RSS, from ``/proc``) can be read before and after
each run; with ``--url`` the RSS is read only when ``--pid`` is given. Each concurrency
level sends questions (cycling through eval/questions.jsonl) from that many clients for
``--duration`` seconds, after ``--warmup-seconds`` of the same load unmeasured (so the RSS
compared is a warm server's: the first burst of concurrency grows ONNX Runtime's arenas
once), and prints throughput, p50/p95/p99 and the errors (a status other than 200, or no
answer). ``--crafted N`` adds N clients sending long crafted questions
(2,000 characters) meanwhile: the latency printed is still that of the normal questions,
the crafted ones' statuses are printed apart. Exits 1 if a normal question failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS_FILE = ROOT / "eval" / "questions.jsonl"
FALLBACK = [
    "锦屏成立了什么联盟",
    "芯·潮夜市大约有多少个摊位",
    "岳林街道辖区有多少家高新技术企业",
    "恒锋工具位于哪里",
    "锦南街道的复工工作专班下设几个工作组",
]


def load_questions(path: Path) -> list[str]:
    if not path.is_file():
        return FALLBACK
    questions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line).get("question")
            if isinstance(q, str) and q.strip():
                questions.append(q)
    return questions or FALLBACK


def crafted_questions(count: int = 8) -> list[str]:
    """Long questions made to cost: 2,000 characters of words from the seed pages, shuffled."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "seeds").glob("*.txt")))
    han = [c for c in text if "\u4e00" <= c <= "\u9fff"]
    rng = random.Random(13)
    return ["".join(rng.choice(han) for _ in range(1_990)) + "是什么？" for _ in range(count)]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``rag serve`` on a free loopback port; waits until it answers /healthz."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rag = Path(sys.executable).with_name("rag")
    env = {**os.environ, **extra_env}
    proc = subprocess.Popen(
        [str(rag), "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rag serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("rag serve did not start within 600 s")


def run_level(
    base: str, questions: list[str], concurrency: int, seconds: float, crafted: int, pid: int | None
) -> dict[str, object]:
    """One measured run: ``concurrency`` normal clients (and ``crafted`` heavy ones) for ``seconds``."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    heavy: Counter[str] = Counter()
    lock = threading.Lock()
    started = time.perf_counter()
    deadline = started + seconds
    heavy_questions = crafted_questions()

    def client_loop(offset: int, is_crafted: bool) -> None:
        i = offset
        with httpx.Client(base_url=base, timeout=120) as client:
            while time.perf_counter() < deadline:
                pool = heavy_questions if is_crafted else questions
                body = {"question": pool[i % len(pool)]}
                i += 1
                t0 = time.perf_counter()
                try:
                    response = client.post("/ask", json=body)
                    status = str(response.status_code)
                    if status == "200" and not response.json().get("answer"):
                        status = "200-empty"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - t0
                with lock:
                    if is_crafted:
                        heavy[status] += 1
                        continue
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(took)

    rss_before = rss_mb(pid)
    with ThreadPoolExecutor(concurrency + crafted) as pool:
        for n in range(crafted):
            pool.submit(client_loop, n, True)
        for n in range(concurrency):
            pool.submit(client_loop, n * 7, False)
    elapsed = time.perf_counter() - started
    rss_after = rss_mb(pid)
    ok = sorted(latencies)
    done = sum(statuses.values())
    return {
        "concurrency": concurrency,
        "crafted_clients": crafted,
        "seconds": round(elapsed, 1),
        "requests": done,
        "errors": done - len(ok),
        "statuses": dict(statuses),
        "crafted_statuses": dict(heavy),
        "throughput_rps": round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": round(percentile(ok, 50) * 1000) if ok else None,
            "p95": round(percentile(ok, 95) * 1000) if ok else None,
            "p99": round(percentile(ok, 99) * 1000) if ok else None,
            "mean": round(statistics.fmean(ok) * 1000) if ok else None,
        },
        "rss_mb": {"before": rss_before, "after": rss_after},
    }


def show(result: dict[str, object]) -> None:
    lat = result["latency_ms"]
    rss = result["rss_mb"]
    assert isinstance(lat, dict) and isinstance(rss, dict)
    line = (
        f"{result['concurrency']:>3} clients"
        + (f" + {result['crafted_clients']} crafted" if result["crafted_clients"] else "")
        + f", {result['seconds']} s: {result['requests']} requests, {result['throughput_rps']} req/s, "
        f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, errors {result['errors']}"
    )
    if result["crafted_clients"]:
        line += f", crafted {result['crafted_statuses']}"
    if rss["before"] is not None and rss["after"] is not None:
        growth = (rss["after"] - rss["before"]) / rss["before"] * 100
        line += f"; server RSS {rss['before']:.0f} -> {rss['after']:.0f} MB ({growth:+.1f}%)"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="Base URL of a running server (else use --serve).")
    parser.add_argument("--pid", type=int, help="PID of that server, to read its RSS.")
    parser.add_argument("--serve", action="store_true", help="Start rag serve on a free port for the run.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8], help="Levels to run, in order.")
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds per level.")
    parser.add_argument("--crafted", type=int, default=0, help="Clients sending crafted long questions.")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=10.0,
        help="Unmeasured load at each level first: the RSS compared is then that of a warm server.",
    )
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE, help="JSONL with a question field.")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON too.")
    args = parser.parse_args(argv)
    if not args.serve and not args.url:
        parser.error("give --url of a running server, or --serve")

    proc = None
    pid = args.pid
    if args.serve:
        proc, base = start_server({})
        pid = proc.pid
    else:
        base = args.url.rstrip("/")
    try:
        questions = load_questions(args.questions)
        with httpx.Client(base_url=base, timeout=60) as client:
            health = client.get("/healthz").json()
            for q in questions[:4]:  # warm up: first answers load lazily made parts
                client.post("/ask", json={"question": q})
        started_rss = rss_mb(pid)
        shown = f", RSS {started_rss:.0f} MB after 4 questions" if started_rss else ""
        print(f"server {base}: {health.get('counts', {}).get('chunks')} chunks{shown}", flush=True)
        results = []
        for level in args.concurrency:
            if args.warmup_seconds > 0:
                run_level(base, questions, level, args.warmup_seconds, args.crafted, pid)
            result = run_level(base, questions, level, args.duration, args.crafted, pid)
            show(result)
            results.append(result)
        if args.json:
            print(json.dumps(results, ensure_ascii=False, indent=1))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
