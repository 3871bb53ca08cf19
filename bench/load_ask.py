"""Load test of ``POST /ask`` against a running server: bounded in requests and time.

    rag serve &                      # in another shell
    .venv/bin/python bench/load_ask.py --url http://127.0.0.1:8000 --requests 200 --concurrency 8

Sends ``--requests`` questions (cycling through eval/questions.jsonl, or a built-in list)
from ``--concurrency`` threads, stops early after ``--max-seconds``, and prints the
throughput and the p50/p95/p99 latency of the successful requests. Exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

QUESTIONS_FILE = Path(__file__).resolve().parent.parent / "eval" / "questions.jsonl"
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


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Base URL of the server.")
    parser.add_argument("--requests", type=int, default=200, help="Requests to send in all.")
    parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at once.")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="Stop sending after this long.")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--mode", default="auto", choices=["auto", "extractive", "llm"])
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE, help="JSONL with a question field.")
    parser.add_argument("--warmup", type=int, default=2, help="Unmeasured requests sent first.")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    args = parser.parse_args(argv)

    questions = load_questions(args.questions)
    base = args.url.rstrip("/")
    with httpx.Client(base_url=base, timeout=60) as client:
        try:
            health = client.get("/healthz").json()
        except httpx.HTTPError as exc:
            print(f"error: cannot reach {base} ({exc}); start it with: rag serve", file=sys.stderr)
            return 2
        for i in range(args.warmup):
            client.post("/ask", json={"question": questions[i % len(questions)], "top_k": args.top_k})

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    counter = iter(range(args.requests))
    started = time.perf_counter()
    deadline = started + args.max_seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                question = questions[i % len(questions)]
                body = {"question": question, "top_k": args.top_k, "answer_mode": args.mode}
                t0 = time.perf_counter()
                try:
                    status = str(client.post("/ask", json=body).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - t0
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(took)

    with ThreadPoolExecutor(args.concurrency) as pool:
        for _ in range(args.concurrency):
            pool.submit(worker)
    elapsed = time.perf_counter() - started

    done = sum(statuses.values())
    ok = sorted(latencies)
    summary = {
        "url": base,
        "model": health.get("model"),
        "chunks": health.get("counts", {}).get("chunks"),
        "requests": done,
        "ok": len(ok),
        "failed": done - len(ok),
        "statuses": dict(statuses),
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {
            "mean": round(statistics.fmean(ok) * 1000, 1) if ok else None,
            "p50": round(percentile(ok, 50) * 1000, 1),
            "p95": round(percentile(ok, 95) * 1000, 1),
            "p99": round(percentile(ok, 99) * 1000, 1),
            "max": round(ok[-1] * 1000, 1) if ok else None,
        },
        "stopped_early": done < args.requests,
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        lat = summary["latency_ms"]
        print(
            f"POST /ask x{done} (concurrency {args.concurrency}, {summary['chunks']} chunks) "
            f"in {elapsed:.1f} s{' (time limit hit)' if summary['stopped_early'] else ''}"
        )
        print(f"  ok {len(ok)}, failed {done - len(ok)} {dict(statuses)}")
        print(f"  throughput {summary['throughput_rps']} req/s")
        print(
            f"  latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  "
            f"mean {lat['mean']}  max {lat['max']}"
        )
    return 0 if done and done == len(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
