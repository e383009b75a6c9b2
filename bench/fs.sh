#!/usr/bin/env bash
# bench/fs.sh - ferry fs against virtiofsd and the host's own syscalls, in
# one run, through ferry's vhost-user front end (ferry-driver): the same
# FUSE requests to each back end, one at a time, as a guest's single thread
# sends them.
#
# Backends: ferry (ferry fs), virtiofsd (cargo install virtiofsd), native
# (the same operations as plain syscalls on the shared directory: the
# ceiling). Both servers run with their defaults: --sandbox namespace,
# --cache auto. Tests: stat (GETATTR), open-close, create-unlink,
# readdir-10k (READDIRPLUS of 10,000 entries), sequential read and write of
# 64 MiB in 4 KiB and 1 MiB requests; cpu = the server's CPU seconds for the
# whole battery (lower is better; none for native).
# Usage: bench/fs.sh [backend ...]   Env: RUNS=3
# Only local files and unix sockets are involved; every process runs under
# `timeout`.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
BACKENDS=${*:-"ferry virtiofsd native"}
OUT=${OUT:-$ROOT/target/bench/fs-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/share"
RAW=$OUT/raw.tsv
: >"$RAW"
. "$ROOT/bench/lib.sh"
VIRTIOFSD=$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")
[ -x "$VIRTIOFSD" ] || { echo "missing virtiofsd: cargo install virtiofsd (needs libseccomp-dev libcap-ng-dev)"; exit 1; }
log "building ferry and ferry-fsbench (release)"
cargo build --release --quiet -p ferry -p ferry-bench || exit 1
FERRY=$ROOT/target/release/ferry
BENCH=$ROOT/target/release/ferry-fsbench
SHARE=$OUT/share
SOCK=$OUT/fs.sock

serve_and_run() { # backend run command...
	local b=$1 r=$2; shift 2
	rm -f "$SOCK"
	timeout 600 "$@" 2>>"$OUT/$b.err" &
	local p=$!
	for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
	# The server's CPU over the whole battery: every process serving this
	# socket (a sandboxed server forks its worker), sampled while it runs
	# (virtiofsd exits as soon as its client disconnects).
	(while kill -0 $p 2>/dev/null; do
		c=0
		for pid in $(pgrep -f -- "--socket-path $SOCK"); do
			[ "$pid" = "$p" ] || c=$(awk -v a="$c" -v b="$(cpu_of "$pid")" 'BEGIN{print a + b}')
		done
		[ "$c" = 0 ] || echo "$c" >"$OUT/cpu"
		sleep 0.1
	done) &
	local sampler=$!
	rm -f "$OUT/cpu"
	timeout 600 "$BENCH" "$b" "$r" "$SHARE" "$SOCK" >>"$RAW" || log "$b run $r failed (see $OUT/$b.err)"
	sleep 0.3
	printf '%s\tcpu\t%s\t%s\tCPU s\t\n' "$b" "$r" "$(cat "$OUT/cpu" 2>/dev/null || echo 0)" >>"$RAW"
	kill $p 2>/dev/null; wait $p 2>/dev/null
	kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
}

for r in $(seq 1 "$RUNS"); do
	for b in $BACKENDS; do
		log "$b, run $r"
		case $b in
		ferry) serve_and_run ferry "$r" "$FERRY" fs --socket-path "$SOCK" --shared-dir "$SHARE" ;;
		virtiofsd) serve_and_run virtiofsd "$r" "$VIRTIOFSD" --socket-path "$SOCK" --shared-dir "$SHARE" ;;
		native) timeout 600 "$BENCH" native "$r" "$SHARE" >>"$RAW" ;;
		*) log "unknown backend $b" ;;
		esac
	done
done
rm -rf "$SHARE"
log "raw results in $RAW"
python3 bench/report.py fs "$RAW" docs/performance.md virtiofsd native
