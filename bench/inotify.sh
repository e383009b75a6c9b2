#!/usr/bin/env bash
# bench/inotify.sh - inotify passthrough latency: a host write to a shared
# directory until the guest's inotify watcher reports it, for ferry run
# shares (a Debian-kernel guest under QEMU).
#
# The guest runs ferry's inotify watcher (`/init tool inotify`) on the
# share; its lines reach the host through the VM's console log, which this
# script tails. Each sample: create a file on the host and time until the
# guest prints CLOSE_WRITE for it; then the same for an append (MODIFY).
# The console path adds its own delay, so these are upper bounds. No peer
# offers true event types to compare with (Lima, Colima, Docker Desktop
# replay only IN_ATTRIB), so the table has ferry alone. `cpu` is the
# serving ferry process's CPU milliseconds per event over the whole run
# (boot and idle time included, so an upper bound).
# Usage: bench/inotify.sh   Env: SAMPLES=100 RUNS=1
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
SAMPLES=${SAMPLES:-100}
RUNS=${RUNS:-1}
OUT=${OUT:-$ROOT/target/bench/inotify-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/share"
RAW=$OUT/raw.tsv
: >"$RAW"
. "$ROOT/bench/lib.sh"
build_guest_bench
export FERRY_STATE_DIR=$OUT/state
trap '$FERRY stop inobench >/dev/null 2>&1' EXIT
for r in $(seq 1 "$RUNS"); do
	rm -rf "$OUT/share"/*
	$FERRY run -d --no-net --name inobench -v "$OUT/share:/mnt/s" -- /init tool inotify /mnt/s >/dev/null || exit 1
	# The detached ferry process serving the share (its CPU is the cost of
	# the passthrough; QEMU is a separate process).
	FPID=""
	for p in $(pgrep -x ferry); do tr '\0' ' ' <"/proc/$p/cmdline" | grep -q "name inobench" && FPID=$p; done
	C0=$(cpu_of "${FPID:-0}")
	timeout 600 python3 - "$FERRY_STATE_DIR/vms/inobench/console.log" "$OUT/share" "$SAMPLES" "$r" >>"$RAW" <<'PY'
import os, sys, time
log, share, samples, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
f = None
deadline = time.time() + 120
while f is None:
    try:
        f = open(log)
    except FileNotFoundError:
        time.sleep(0.05)
seen = ""
def wait_for(line, limit=10.0):
    global seen
    start = time.time()
    while line not in seen:
        chunk = f.read()
        if chunk:
            seen += chunk
            continue
        if time.time() - start > limit:
            return None
        time.sleep(0.0005)
    return time.time()
if wait_for("watching /mnt/s", 120) is None:
    sys.exit("the guest watcher did not start")
results = {"create": [], "modify": []}
for i in range(samples):
    p = os.path.join(share, "f%d" % i)
    t0 = time.time()
    with open(p, "w") as w:
        w.write("x")
    t1 = wait_for("CLOSE_WRITE f%d\n" % i)
    if t1 is not None:
        results["create"].append((t1 - t0) * 1000)
    time.sleep(0.1)
    t0 = time.time()
    with open(p, "a") as w:
        w.write("y")
    n = seen.count("MODIFY f%d\n" % i)
    start = time.time()
    while seen.count("MODIFY f%d\n" % i) <= n and time.time() - start < 10:
        chunk = f.read()
        seen += chunk
        if not chunk:
            time.sleep(0.0005)
    if seen.count("MODIFY f%d\n" % i) > n:
        results["modify"].append((time.time() - t0) * 1000)
    time.sleep(0.1)
for kind, xs in results.items():
    xs.sort()
    lost = samples - len(xs)
    if not xs:
        continue
    p50 = xs[len(xs) // 2]
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    print("ferry\t%s-p50\t%s\t%.1f\tms\t" % (kind, run, p50))
    print("ferry\t%s-p99\t%s\t%.1f\tms\t%s" % (kind, run, p99, ("%d lost" % lost) if lost else ""))
PY
	# ferry's CPU milliseconds per host change passed to the guest (two per sample).
	C1=$(cpu_of "${FPID:-0}")
	[ -n "$FPID" ] && python3 -c "print('ferry\tcpu\t$r\t%.2f\tCPU ms/event\t' % (($C1 - $C0) * 1000 / (2 * $SAMPLES)))" >>"$RAW"
	$FERRY stop inobench >/dev/null
done
log "raw results in $RAW"
cat "$RAW"
python3 bench/report.py inotify "$RAW" docs/performance.md
