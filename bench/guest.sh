#!/usr/bin/env bash
# bench/guest.sh - a real guest's network path through each VM front end,
# side by side in one run: a Debian-kernel guest under QEMU downloads a
# file from a web server on the host's loopback.
#
# Backends (same kernel, initramfs, QEMU and guest command everywhere):
#   ferry-stream      ferry net --listen-qemu (QEMU -netdev stream)
#   ferry-vhost-user  ferry net --listen-vhost-user (QEMU -netdev vhost-user)
#   passt             passt -s (QEMU -netdev stream), host via the gateway
#   qemu-slirp        QEMU's built-in -netdev user (libslirp)
# Test: down = MB/s of SIZE_MB fetched with busybox wget, timed inside the
# guest with /proc/uptime; RUNS fetches per guest boot, median reported.
# Under TCG (no usable KVM here) the guest's CPU is the bottleneck for all
# of them: compare ratios, and rerun on a KVM host for absolute numbers.
# Usage: bench/guest.sh [backend ...]    Env: SIZE_MB=128 RUNS=3
# Traffic goes only to 127.0.0.1 and the guests this script boots; every
# process runs under `timeout`.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE_MB=${SIZE_MB:-128}
RUNS=${RUNS:-3}
BACKENDS=${*:-"ferry-stream ferry-vhost-user passt qemu-slirp"}
OUT=${OUT:-$ROOT/target/bench/guest-$(date +%Y%m%d-%H%M%S)}
PORT=25380
mkdir -p "$OUT"
RAW=$OUT/raw.tsv
: >"$RAW"
log() { echo "[$(date +%T)] $*" >&2; }
for c in qemu-system-x86_64 passt python3 timeout; do
	command -v $c >/dev/null || { echo "missing $c: run scripts/install-deps"; exit 1; }
done
log "building ferry (release) and the guest image"
cargo build --release --quiet -p ferry || exit 1
scripts/build-guest-init >/dev/null || exit 1
FERRY=$ROOT/target/release/ferry
export FERRY_GUEST_INIT=$ROOT/target/x86_64-unknown-linux-gnu/release/ferry-guest-init

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -f "$OUT"/*.sock "$OUT/www/big.bin"
}
trap cleanup EXIT

mkdir -p "$OUT/www"
head -c $((SIZE_MB << 20)) /dev/urandom >"$OUT/www/big.bin"
timeout 3600 python3 -m http.server $PORT --bind 127.0.0.1 --directory "$OUT/www" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1

# The guest's side: RUNS timed downloads, one "RESULT start end" line each.
GUEST='H=${HOST:-$(ip route | awk "/default/{print \$3}")}
for i in $(seq 1 '$RUNS'); do
  a=$(cut -d" " -f1 /proc/uptime)
  wget -q -O /dev/null http://$H:'$PORT'/big.bin || { echo FAIL; exit 1; }
  b=$(cut -d" " -f1 /proc/uptime)
  echo RESULT $a $b
done'

# A QEMU wrapper for qemu-slirp: swaps ferry run's stream netdev for -netdev user.
cat >"$OUT/qemu-slirp" <<'W'
#!/bin/sh
for a; do
	shift
	case $a in stream,id=net0,*) set -- "$@" "user,id=net0" ;; *) set -- "$@" "$a" ;; esac
done
exec qemu-system-x86_64 "$@"
W
chmod +x "$OUT/qemu-slirp"

run_guest() { # backend network host [extra ferry run args]
	local b=$1 net=$2 host=$3
	shift 3
	local envs=()
	[ -n "$host" ] && envs=(-e "HOST=$host")
	timeout 900 "$FERRY" run --network "$net" "${envs[@]}" "$@" -- sh -c "$GUEST" >"$OUT/$b.out" 2>"$OUT/$b.err"
	local n=0
	while read -r _ a c; do
		n=$((n + 1))
		python3 -c "import sys; print('%s\tdown\t%d\t%.1f\tMB/s\t' % ('$b', $n, $SIZE_MB * 1.048576 / ($c - $a)))" >>"$RAW"
	done < <(grep '^RESULT' "$OUT/$b.out")
	[ "$n" -gt 0 ] || { log "$b: no result; see $OUT/$b.err"; tail -5 "$OUT/$b.err" >&2; }
}

for b in $BACKENDS; do
	log "$b"
	S=$OUT/$b.sock
	case $b in
	ferry-stream)
		timeout 1200 "$FERRY" net --listen-qemu "unix://$S" --dns-upstream 127.0.0.1:9 2>"$OUT/$b.net.err" &
		P=$!; sleep 1
		run_guest "$b" "unix://$S" 10.0.2.254
		kill $P; wait $P 2>/dev/null ;;
	ferry-vhost-user)
		timeout 1200 "$FERRY" net --listen-vhost-user "$S" --dns-upstream 127.0.0.1:9 2>"$OUT/$b.net.err" &
		P=$!; sleep 1
		run_guest "$b" "vhost-user://$S" 10.0.2.254
		kill $P; wait $P 2>/dev/null ;;
	passt)
		# passt drops to nobody before binding: its socket needs a world-writable directory.
		S=$(mktemp -u /tmp/ferry-bench-passt-XXXXXX.sock)
		timeout 1200 passt -f -q -s "$S" -t none -u none 2>"$OUT/$b.net.err" &
		P=$!
		for _ in $(seq 50); do [ -S "$S" ] && break; sleep 0.1; done
		run_guest "$b" "unix://$S" ""
		kill $P; wait $P 2>/dev/null; rm -f "$S" ;;
	qemu-slirp)
		: >"$S"
		run_guest "$b" "unix://$S" 10.0.2.2 --qemu "$OUT/qemu-slirp" ;;
	*) log "unknown backend $b" ;;
	esac
done
log "raw results in $RAW"
python3 bench/report.py guest "$RAW" docs/performance.md ferry-stream passt qemu-slirp
