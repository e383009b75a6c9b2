#!/usr/bin/env bash
# bench/fuzz.sh - coverage-guided fuzzing (cargo-fuzz on nightly, libFuzzer)
# of what a guest can send: Ethernet frames through the whole switch and NAT
# (frames), DNS queries (dns), DHCPv4/DHCPv6/NDP messages (dhcp).
#
# Usage: bench/fuzz.sh [SECONDS per target, default 60] [target ...]
# Each target runs inside a fresh network namespace holding only a loopback
# (unshare --net), so a flow the fuzzer opens reaches no network. Crashes
# land in fuzz/artifacts/TARGET/ with the input that caused them; the
# corpus grows in fuzz/corpus/TARGET/ (both ignored by git), starting from
# the valid messages in fuzz/seeds/TARGET/.
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-60}
[ $# -gt 0 ] && shift
TARGETS=${*:-"frames dns dhcp"}
[ "$(id -u)" = 0 ] || { echo "bench/fuzz.sh needs root (a network namespace per run)"; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
status=0
for t in $TARGETS; do
	mkdir -p "fuzz/corpus/$t"
	seeds=""
	[ -d "fuzz/seeds/$t" ] && seeds="fuzz/seeds/$t"
	echo "== $t: ${SECS}s"
	unshare --net sh -c "ip link set lo up; exec timeout $((SECS + 600)) cargo +nightly fuzz run --fuzz-dir fuzz $t fuzz/corpus/$t $seeds -- -max_total_time=$SECS -rss_limit_mb=2048 -print_final_stats=1" \
		2>&1 | grep -E 'stat::|Done|ERROR|SUMMARY|panicked|crash-' || true
	[ -z "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ] || { echo "$t: crashes in fuzz/artifacts/$t"; status=1; }
done
exit $status
