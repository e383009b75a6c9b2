#!/usr/bin/env bash
# bench/fuzz.sh - coverage-guided fuzzing (cargo-fuzz on nightly, libFuzzer)
# of what a guest or a local client can send: Ethernet frames through the
# whole switch and NAT (frames), DNS queries (dns), DHCPv4/DHCPv6/NDP
# messages (dhcp), FUSE requests through the fs device (fuse), hostile
# virtqueues for the net, fs and vsock devices (virtio), vsock packets
# (vsock), vhost-user control messages (vhost_user), the control and
# gvproxy API (api), slirp4netns's API (slirp_api).
#
# Usage: bench/fuzz.sh [SECONDS per target, default 60] [target ...]
# Each target runs inside a fresh network namespace holding only a loopback
# (unshare --net), so a flow the fuzzer opens reaches no network, and a
# private mount namespace whose /tmp/ferry-fuzz is a 256 MiB tmpfs, where
# the targets keep their shares and sockets. Crashes
# land in fuzz/artifacts/TARGET/ with the input that caused them; the
# corpus grows in fuzz/corpus/TARGET/ (both ignored by git), starting from
# the valid messages in fuzz/seeds/TARGET/.
set -eu
cd "$(dirname "$0")/.."
SECS=${1:-60}
[ $# -gt 0 ] && shift
TARGETS=${*:-"frames dns dhcp fuse virtio vsock vhost_user api slirp_api"}
[ "$(id -u)" = 0 ] || { echo "bench/fuzz.sh needs root (a network namespace per run)"; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# Dependencies are fetched and every target is built here, with the
# network: the runs below are in namespaces without one, where cargo could
# not download a crate a fresh checkout has not seen yet.
echo "== building the fuzz targets (cargo +nightly fuzz build)"
cargo +nightly fetch --manifest-path fuzz/Cargo.toml
for t in $TARGETS; do
	cargo +nightly fuzz build --fuzz-dir fuzz "$t" || { echo "fuzz target $t does not build (above)"; exit 1; }
done
status=0
for t in $TARGETS; do
	mkdir -p "fuzz/corpus/$t"
	seeds=""
	[ -d "fuzz/seeds/$t" ] && seeds="fuzz/seeds/$t"
	echo "== $t: ${SECS}s"
	log="${TMPDIR:-/tmp}/ferry-fuzz-$t.log"
	# A build failure or a crash ends the run with a non-zero status.
	if ! unshare --net --mount sh -c "mount --make-rprivate / && mkdir -p /tmp/ferry-fuzz && mount -t tmpfs -o size=256m ferry-fuzz /tmp/ferry-fuzz && ip link set lo up && CARGO_NET_OFFLINE=true exec timeout $((SECS + 600)) cargo +nightly fuzz run --fuzz-dir fuzz $t fuzz/corpus/$t $seeds -- -max_total_time=$SECS -rss_limit_mb=2048 -print_final_stats=1" >"$log" 2>&1; then
		status=1
		echo "$t: FAILED (the whole output: $log)"
		grep -E '^error|panicked|ERROR' "$log" | head -5 || true
	fi
	grep -E 'stat::|Done|DONE|SUMMARY|crash-|oom-|leak-|timeout-' "$log" || true
	[ -z "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ] || { echo "$t: crashes in fuzz/artifacts/$t"; status=1; }
done
exit $status
