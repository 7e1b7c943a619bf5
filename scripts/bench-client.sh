#!/usr/bin/env bash
# Is the client the bottleneck? (a benchmark, not a test: it prints, asserts nothing)
#
# examples/instant_server answers every streamed completion at once (one token and the final
# event), on 127.0.0.1 on this same machine. ttft's api backend then runs a closed-loop load of
# short streams against it. Goal: at least 1,000 requests/s with TTFT p50 under 1 ms, i.e. what
# ttft adds to a measurement is far below what any real server takes.
# Environment: REQUESTS (default 20000), CONCURRENCY (default 8).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REQUESTS=${REQUESTS:-20000}
CONCURRENCY=${CONCURRENCY:-8}
cargo build --release -q --bin ttft --example instant_server
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
OUT=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TARGET/examples/instant_server" "$PORT" >/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
echo "client throughput: $REQUESTS short streams, closed loop, concurrency $CONCURRENCY, instant server on 127.0.0.1 ($(nproc) cores shared)"
"$TARGET/ttft" --backend api --api-url "http://127.0.0.1:$PORT" --concurrency "$CONCURRENCY" \
  --num-requests "$REQUESTS" --max-new-tokens 1 --warmup 0 --prompts data/short_prompts.txt \
  --out "$OUT" --no-progress | sed -n '/^load:/,/^  E2E/p'
echo "goal: >= 1000 req/s, TTFT p50 < 1 ms"

# The open loop: the highest rate at which ttft's own sends stay within 1 ms of their schedule
# (lateness p99), found by the saturation search against the same instant server.
OPEN_REQUESTS=${OPEN_REQUESTS:-2000}
echo
echo "open loop: highest rate with send lateness p99 <= 1 ms ($OPEN_REQUESTS requests per probe, instant server)"
"$TARGET/ttft" --backend api --api-url "http://127.0.0.1:$PORT" --max-goodput late_p99=1 \
  --request-rate 500 --num-requests "$OPEN_REQUESTS" --max-new-tokens 1 --warmup 0 \
  --prompts data/short_prompts.txt --out "$OUT" --no-progress | sed -n '/^max goodput search/,/saturation\|holds up to\|fails even/p'
if command -v aiperf >/dev/null 2>&1; then
  echo "(aiperf is installed; measure it against the same server for comparison: aiperf profile --url http://127.0.0.1:$PORT ...)"
else
  echo "(AIPerf is not installed here: no peer figure; pip install aiperf to compare against the same instant server)"
fi
