#!/usr/bin/env bash
# bench/dns.sh - ferry's DNS against dnsmasq, same run, same upstream.
#
# A dnsmasq on 127.0.0.1:5301 is the upstream (answers *.upstream.bench).
# ferry (ferry net --dns-listen 127.0.0.1:5302) and a second dnsmasq
# (127.0.0.1:5303, cache 10000) both forward to it. dnsperf measures:
#   cached    100 names asked over and over (after one warm-up pass)
#   uncached  every query a new name, so every query goes upstream
# cached-cpu/uncached-cpu: the server's CPU seconds per 1,000 answered queries
# (utime+stime from /proc; the upstream's work is not counted for either).
# ferry runs with --dns-rate-limit 0 here: the per-source limit (default
# 2000 q/s) exists to stop floods from one guest, and dnsperf is one source.
# Usage: bench/dns.sh     Env: DUR=10 RUNS=1
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${DUR:-10}
RUNS=${RUNS:-1}
OUT=${OUT:-$ROOT/target/bench/dns-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RAW=$OUT/raw.tsv
: >"$RAW"
. "$ROOT/bench/lib.sh"
for c in dnsperf dnsmasq python3 timeout; do
	command -v $c >/dev/null || { echo "missing $c: run scripts/install-deps"; exit 1; }
done
cargo build --release --quiet -p ferry || exit 1
FERRY=$ROOT/target/release/ferry
MAXLIFE=$((RUNS * 4 * (DUR + 20) + 60))
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; PIDS=(); }
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

DNSMASQ=(dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --user=root)
timeout "$MAXLIFE" "${DNSMASQ[@]}" --port=5301 --address=/upstream.bench/192.0.2.1 --local-ttl=600 --cache-size=0 --pid-file="$OUT/up.pid" >"$OUT/up.log" 2>&1 &
PIDS+=($!)
timeout "$MAXLIFE" "${DNSMASQ[@]}" --port=5303 --server=127.0.0.1#5301 --cache-size=10000 --pid-file="$OUT/peer.pid" >"$OUT/peer.log" 2>&1 &
PIDS+=($!)
timeout "$MAXLIFE" "$FERRY" net --listen-qemu "unix://$OUT/ferry.sock" --dns-listen 127.0.0.1:5302 \
	--dns-upstream 127.0.0.1:5301 --dns-rate-limit 0 2>"$OUT/ferry.log" &
PIDS+=($!)
FERRY_WRAP=$!
sleep 1

for i in $(seq 1 100); do echo "name$i.upstream.bench A"; done >"$OUT/cached.txt"
python3 -c "
import random
r = random.Random(7)
for i in range(2000000): print('u%d-%d.upstream.bench A' % (i, r.randrange(1 << 30)))" >"$OUT/uncached.txt"

qps() { sed -n 's/.*Queries per second: *\([0-9.]*\).*/\1/p' | head -1; }
# The server process behind each backend (under its `timeout`), for CPU.
server_pid() { # backend
	case $1 in
	ferry) pgrep -P "$FERRY_WRAP" | head -1 ;;
	dnsmasq) cat "$OUT/peer.pid" ;;
	esac
}
run() { # backend port test file extra...
	local b=$1 port=$2 t=$3 file=$4
	shift 4
	local out pid c0 c1
	pid=$(server_pid "$b")
	c0=$(cpu_of "$pid")
	out=$(timeout $((DUR + 30)) dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$DUR" -c 4 -q 200 "$@" 2>&1)
	c1=$(cpu_of "$pid")
	local lost q
	lost=$(echo "$out" | sed -n 's/.*Queries lost: *\([0-9]*\).*/\1/p' | head -1)
	q=$(echo "$out" | sed -n 's/.*Queries completed: *\([0-9]*\).*/\1/p' | head -1)
	printf '%s\t%s\t%s\t%s\tq/s\tlost=%s\n' "$b" "$t" "$RUN" "$(echo "$out" | qps)" "${lost:-?}" >>"$RAW"
	# CPU seconds the server burned per 1,000 answered queries (lower is better).
	python3 -c "print('%s\t%s-cpu\t%s\t%.4f\tCPU s/1k q\t' % ('$b', '$t', '$RUN', ($c1 - $c0) * 1000.0 / max(1, ${q:-0})))" >>"$RAW"
}
for RUN in $(seq 1 "$RUNS"); do
	for b in ferry dnsmasq; do
		port=5302; [ $b = dnsmasq ] && port=5303
		log "run $RUN: $b"
		dnsperf -s 127.0.0.1 -p $port -d "$OUT/cached.txt" -n 1 >/dev/null 2>&1 # warm the cache
		run $b $port cached "$OUT/cached.txt"
		# A different slice of fresh names for every backend and run.
		off=$(( (RUN * 2 + (port - 5302) / 1) * 300000 ))
		tail -n +$((off + 1)) "$OUT/uncached.txt" | head -300000 >"$OUT/uncached-$b-$RUN.txt"
		run $b $port uncached "$OUT/uncached-$b-$RUN.txt" -n 1
	done
done
log "raw results: $RAW"
python3 bench/report.py dns "$RAW" docs/performance.md dnsmasq
