#!/usr/bin/env bash
# bench/publish-auto.sh - `ferry run --publish-auto` latency in a TCG
# guest (Debian kernel under QEMU): from the guest starting its server
# (the line is printed as httpd is launched, before it listens) to the
# host's 127.0.0.1:PORT answering HTTP ("up"), and from
# the guest printing that it stopped the server to the host port refusing
# connections ("down"). The guest's line reaches the host through its
# console, which adds its own delay, so these are upper bounds. No peer
# forwards a VM's listeners by itself on Linux (Lima does it over SSH on
# macOS), so the table has ferry alone. `cpu` is ferry's own CPU (QEMU not
# counted) per port published and withdrawn, over the whole run.
# Usage: bench/publish-auto.sh   Env: SAMPLES=30 RUNS=1
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
SAMPLES=${SAMPLES:-30}
RUNS=${RUNS:-1}
OUT=${OUT:-$ROOT/target/bench/publish-auto-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RAW=$OUT/raw.tsv
: >"$RAW"
. "$ROOT/bench/lib.sh"
build_guest_bench
export FERRY_STATE_DIR=$OUT/state
for r in $(seq 1 "$RUNS"); do
	timeout 900 python3 - "$FERRY" "$SAMPLES" "$r" >>"$RAW" <<'PY' || exit 1
import os, queue, socket, subprocess, sys, threading, time
ferry, samples, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = 21000
script = ("mkdir /www; echo auto > /www/index.html; i=0; while [ $i -lt %d ]; do "
          "p=$((%d+i)); httpd -f -p $p -h /www & h=$!; echo L $p; sleep 1.5; "
          "kill $h; wait $h 2>/dev/null; echo K $p; sleep 1.2; i=$((i+1)); done" % (samples, base))
proc = subprocess.Popen([ferry, "run", "--publish-auto", "--", "sh", "-c", script],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
lines = queue.Queue()
def reader():
    for line in proc.stdout:
        lines.put((line.split(), time.monotonic()))
threading.Thread(target=reader, daemon=True).start()
def up(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return b"auto" in data
    except OSError:
        return False
def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
res = {"up": [], "down": []}
deadline = time.monotonic() + 240
while len(res["down"]) < samples and time.monotonic() < deadline:
    try:
        words, at = lines.get(timeout=60)
    except queue.Empty:
        break
    if len(words) != 2 or words[0] not in ("L", "K"):
        continue
    port, kind, check = int(words[1]), ("up" if words[0] == "L" else "down"), (up if words[0] == "L" else refused)
    while not check(port):
        if time.monotonic() - at > 5:
            break
        time.sleep(0.01)
    else:
        res[kind].append((time.monotonic() - at) * 1000)
        continue
def cpu_seconds(pid):
    # utime + stime of ferry's own threads (QEMU, its child, is not counted).
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
try:
    cpu = cpu_seconds(proc.pid)
except OSError:
    cpu = None
proc.kill()
for kind, xs in res.items():
    xs.sort()
    lost = samples - len(xs)
    if not xs:
        continue
    p50 = xs[len(xs) // 2]
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    print("ferry\t%s-p50\t%s\t%.0f\tms\t" % (kind, run, p50))
    print("ferry\t%s-p99\t%s\t%.0f\tms\t%s" % (kind, run, p99, ("%d lost" % lost) if lost else ""))
if cpu is not None and res["up"]:
    # ferry's CPU milliseconds per port published and withdrawn, over the whole run.
    print("ferry\tcpu\t%s\t%.1f\tCPU ms/port\t" % (run, cpu * 1000 / len(res["up"])))
PY
done
log "raw results in $RAW"
cat "$RAW"
python3 bench/report.py publish-auto "$RAW" docs/performance.md
