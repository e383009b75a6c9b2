#!/usr/bin/env bash
# bench/platform.sh - what emulation costs: the same small CPU-bound jobs
# run natively (the guest's x86-64 busybox) and as arm64 binaries through
# qemu-user (Debian's busybox-static for arm64, via `ferry run --binfmt
# aarch64`), in one TCG guest, so both sides share the same (emulated) CPU.
# Jobs: a shell loop (interpreter work, many small calls) and sha256sum of
# 16 MiB (a tight compute loop). Ratios to native: 1.0 = no cost.
# Usage: bench/platform.sh   Env: RUNS=3 ITER=200000
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
ITER=${ITER:-200000}
OUT=${OUT:-$ROOT/target/bench/platform-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RAW=$OUT/raw.tsv
. "$ROOT/bench/lib.sh"
ARM=$ROOT/target/test-cache/busybox-arm64
if [ ! -x "$ARM/bin/busybox" ]; then
	log "fetching Debian's busybox-static for arm64"
	mkdir -p "$OUT/dl" && cd "$OUT/dl" || exit 1
	apt-get download busybox-static:arm64 >/dev/null 2>&1 ||
		{ dpkg --add-architecture arm64 && apt-get update -qq && apt-get download busybox-static:arm64; } || exit 1
	dpkg-deb -x busybox-static_*_arm64.deb "$ARM" || exit 1
	cd "$ROOT" || exit 1
fi
build_guest_bench
export FERRY_STATE_DIR=$OUT/state
script='dd if=/dev/urandom of=/tmp/d bs=1M count=16 2>/dev/null
for r in $(seq 1 '"$RUNS"'); do for kind in native arm64; do
  if [ $kind = native ]; then BB=/bin/busybox; else BB=/mnt/arm/bin/busybox; fi
  t=$(/bin/busybox time -p $BB sh -c "i=0; while [ \$i -lt '"$ITER"' ]; do i=\$((i+1)); done" 2>&1 | awk "/^real/{print \$2}")
  echo "R $kind loop $r $t"
  t=$(/bin/busybox time -p $BB sha256sum /tmp/d 2>&1 >/dev/null | awk "/^real/{print \$2}")
  echo "R $kind sha $r $t"
done; done'
log "one TCG guest, native and emulated side by side ($RUNS runs)"
target/release/ferry run --binfmt aarch64 -v "$ARM:/mnt/arm" -- sh -c "$script" >"$OUT/guest.log" 2>&1 || { cat "$OUT/guest.log"; exit 1; }
awk -v iter="$ITER" '$1 == "R" {
	name = ($2 == "native") ? "native" : "qemu-user-arm64"
	if ($3 == "loop") printf "%s\tshell-loop\t%s\t%.0f\titer/s\t\n", name, $4, iter / $5
	else printf "%s\tsha256-16MiB\t%s\t%.2f\tMB/s\t\n", name, $4, 16 / $5
}' "$OUT/guest.log" >"$RAW"
log "raw results in $RAW"
cat "$RAW"
python3 bench/report.py platform "$RAW" docs/performance.md native
