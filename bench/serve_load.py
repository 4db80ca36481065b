"""Load test of `imgcls serve` on 127.0.0.1 with ~10% hostile uploads; stops by itself.

    python bench/serve_load.py RUN_OR_CHECKPOINT_OR_ONNX [--requests 1000] [--clients 16]

Starts the server in a child process on a free loopback port, sends a bounded number of
requests from concurrent clients (most are real photos from ../shared/datasets/catsdogs/val,
or generated JPEGs; about 10% are garbage bytes, an oversized file, a decompression bomb or an
empty body), then prints requests/s, p50/p99 latency, the count of each status code and the
server's peak resident memory (VmHWM), and a final JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs" / "val"


def bomb() -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def payloads(n_photos: int = 50) -> tuple[list[bytes], list[tuple[str, bytes | None]]]:
    files = sorted(PHOTOS.rglob("*.jpg"))[:n_photos]
    good = [f.read_bytes() for f in files]
    if not good:
        rng = np.random.default_rng(0)
        for _ in range(n_photos):
            b = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(b, "JPEG")
            good.append(b.getvalue())
    hostile = [("garbage", np.random.default_rng(1).bytes(5000)), ("oversized", b"\xff" * (9 << 20)),
               ("bomb", bomb()), ("empty", None)]
    return good, hostile


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--hostile", type=float, default=0.1)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", args.model, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        good, hostile = payloads()
        rng = np.random.default_rng(0)
        plan = []
        for i in range(args.requests):
            if rng.random() < args.hostile:
                plan.append(hostile[int(rng.integers(len(hostile)))])
            else:
                plan.append(("photo", good[int(rng.integers(len(good)))]))
        lock = threading.Lock()
        latencies, codes, kinds = [], Counter(), Counter()
        next_i = [0]

        def client():
            with httpx.Client(base_url=base, timeout=60) as c:
                while True:
                    with lock:
                        if next_i[0] >= len(plan):
                            return
                        kind, data = plan[next_i[0]]
                        next_i[0] += 1
                    t = time.perf_counter()
                    try:
                        if data is None:
                            r = c.post("/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x"})
                        else:
                            r = c.post("/predict", files={"file": (f"{kind}.jpg", data, "image/jpeg")})
                        code = r.status_code
                    except httpx.HTTPError as exc:
                        code = f"error:{type(exc).__name__}"
                    dt = time.perf_counter() - t
                    with lock:
                        latencies.append(dt)
                        codes[str(code)] += 1
                        kinds[f"{kind}->{code}"] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak = vm_hwm_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=20)
    lat = np.array(latencies) * 1000
    res = {"requests": len(latencies), "clients": args.clients, "seconds": round(wall, 2),
           "requests_per_s": round(len(latencies) / wall, 1),
           "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
           "status": dict(sorted(codes.items())), "by_kind": dict(sorted(kinds.items())),
           "server_peak_rss_mb": round(peak, 1),
           "5xx": sum(v for k, v in codes.items() if k.startswith("5"))}
    print(f"{res['requests']} requests from {args.clients} clients in {wall:.1f} s: "
          f"{res['requests_per_s']} req/s, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms")
    print("status codes:", res["status"])
    print("by kind:", res["by_kind"])
    print(f"server peak RSS {peak:.0f} MB; 5xx responses: {res['5xx']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
