#!/usr/bin/env bash
# bench/guest.sh - a real guest's network path through each VM front end,
# side by side in one run: a Debian-kernel guest under QEMU downloads a
# file from a web server on the host's loopback.
#
# Backends (same kernel, initramfs, QEMU and guest command everywhere):
#   ferry-stream      ferry net --listen-qemu (QEMU -netdev stream)
#   ferry-vhost-user  ferry net --listen-vhost-user (QEMU -netdev vhost-user;
#                     segmentation offload both ways)
#   passt             passt -s (QEMU -netdev stream), host via the gateway
#   qemu-slirp        QEMU's built-in -netdev user (libslirp; 1500 only: its
#                     MTU is fixed)
# passt's vhost-user mode is not in this machine's passt (Debian bookworm's
# predates it), so its row is missing; set PASST=/path/to/newer/passt to add
# passt-vhost-user.
# Each backend runs at every MTU in MTUS (one guest boot each). Tests:
#   down-MTU  MB/s of SIZE_MB fetched with busybox wget from the host, with
#             the guest's CPU share (not idle) during each run ("guest busy")
#   up-MTU    MB/s of SIZE_MB sent with busybox nc to a host sink
#   cpu-MTU   CPU seconds the network daemon burned per GB moved (its
#             utime+stime over the whole boot; lower is better; QEMU's
#             libslirp runs inside QEMU and is not separable: "-")
#   qemu-cpu-MTU  the same for QEMU itself (the TCG guest, its I/O thread,
#             and libslirp for qemu-slirp), over the whole boot
# timed inside the guest with /proc/uptime; RUNS of each per boot, every
# run shown in brackets (the first transfer in a fresh guest is slower).
# Under TCG (no usable KVM here) the guest's CPU is the bottleneck for all
# of them: compare ratios, and rerun on a KVM host for absolute numbers.
# Usage: bench/guest.sh [backend ...]    Env: SIZE_MB=128 RUNS=3 MTUS="1500 65520"
# Traffic goes only to 127.0.0.1 and the guests this script boots; every
# process runs under `timeout`.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE_MB=${SIZE_MB:-128}
RUNS=${RUNS:-3}
MTUS=${MTUS:-"1500 65520"}
PASST=${PASST:-passt}
BACKENDS=${*:-"ferry-stream ferry-vhost-user passt qemu-slirp"}
OUT=${OUT:-$ROOT/target/bench/guest-$(date +%Y%m%d-%H%M%S)}
PORT=25380
SINK=25381
mkdir -p "$OUT"
RAW=$OUT/raw.tsv
: >"$RAW"
. "$ROOT/bench/lib.sh"
for c in qemu-system-x86_64 "$PASST" python3 timeout; do
	command -v $c >/dev/null || { echo "missing $c: run scripts/install-deps"; exit 1; }
done
build_guest_bench

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
# The upload sink: reads SIZE_MB per connection, then closes it.
timeout 3600 python3 -c "
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $SINK)); s.listen(16)
def drain(c):
    left = $SIZE_MB << 20
    while left > 0:
        b = c.recv(1 << 20)
        if not b: break
        left -= len(b)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1

# The guest's side: RUNS timed downloads, then RUNS timed uploads of a file
# made in the guest's memory first; one "RESULT dir start end busy" line
# each, busy being the share of the guest's CPU time (its one vCPU) that
# was not idle during the transfer, from /proc/stat: at ~100 % the guest,
# not the network path, is what bounds the transfer.
GUEST='H=${HOST:-$(ip route | awk "/default/{print \$3}")}
ticks() { awk "/^cpu /{print \$2+\$3+\$4+\$5+\$6+\$7+\$8+\$9, \$5+\$6}" /proc/stat; }
busy() { echo "$1 $2" | awk "{t=\$3-\$1; print (t > 0 ? int(100-100*(\$4-\$2)/t+0.5) : 0)}"; }
for i in $(seq 1 '$RUNS'); do
  s=$(ticks); a=$(cut -d" " -f1 /proc/uptime)
  wget -q -O /dev/null http://$H:'$PORT'/big.bin || { echo FAIL; exit 1; }
  b=$(cut -d" " -f1 /proc/uptime)
  echo RESULT down $a $b $(busy "$s" "$(ticks)")
done
wget -q -O /tmp/up http://$H:'$PORT'/big.bin || { echo FAIL; exit 1; }
for i in $(seq 1 '$RUNS'); do
  s=$(ticks); a=$(cut -d" " -f1 /proc/uptime)
  nc $H '$SINK' </tmp/up || { echo FAIL; exit 1; }
  b=$(cut -d" " -f1 /proc/uptime)
  echo RESULT up $a $b $(busy "$s" "$(ticks)")
done'

# A QEMU wrapper for every guest: runs QEMU and writes the CPU seconds it
# burned (all its threads: the TCG vCPU, its I/O thread, and for
# qemu-slirp libslirp) to $OUT/qemu.cpu when it ends. With QEMU_SLIRP=1 it
# swaps ferry run's stream netdev for -netdev user.
cat >"$OUT/qemu" <<W
#!/usr/bin/env python3
import os, signal, sys
args = sys.argv[1:]
if os.environ.get("QEMU_SLIRP") == "1":
    args = ["user,id=net0" if a.startswith("stream,id=net0,") else a for a in args]
pid = os.fork()
if pid == 0:
    # QEMU dies with this wrapper, whatever kills it (PR_SET_PDEATHSIG).
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    os.execvp("qemu-system-x86_64", ["qemu-system-x86_64"] + args)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda n, f: os.kill(pid, n))
while True:
    try:
        _, status, ru = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
with open("$OUT/qemu.cpu", "w") as f:
    f.write("%.2f\\n" % (ru.ru_utime + ru.ru_stime))
sys.exit(os.waitstatus_to_exitcode(status) if status else 0)
W
chmod +x "$OUT/qemu"

daemon_cpu() { # pid of the `timeout` wrapping a daemon -> the daemon's CPU seconds
	local child
	child=$(pgrep -P "$1" | head -1)
	cpu_of "${child:-$1}"
}

run_guest() { # backend mtu network host daemon-pid [extra ferry run args]
	local b=$1 mtu=$2 net=$3 host=$4 pid=$5
	shift 5
	local envs=()
	[ -n "$host" ] && envs=(-e "HOST=$host")
	local c0=0
	[ -n "$pid" ] && c0=$(daemon_cpu "$pid")
	rm -f "$OUT/qemu.cpu"
	timeout 900 "$FERRY" run --qemu "$OUT/qemu" --memory 1024 --network "$net" "${envs[@]}" "$@" -- sh -c "$GUEST" >"$OUT/$b-$mtu.out" 2>"$OUT/$b-$mtu.err"
	local n=0 down=0 up=0
	local bd="" bu="" seen
	while read -r _ dir a c pct; do
		n=$((n + 1))
		if [ "$dir" = down ]; then
			down=$((down + 1)) i=$down bd="$bd${bd:+/}${pct:-?}" seen=$bd
		else
			up=$((up + 1)) i=$up bu="$bu${bu:+/}${pct:-?}" seen=$bu
		fi
		# The guest's CPU share of every run so far (the report shows the
		# last run's: all of them).
		python3 -c "print('%s\t%s-%s\t%d\t%.1f\tMB/s\tguest busy %s %%' % ('$b', '$dir', '$mtu', $i, $SIZE_MB * 1.048576 / ($c - $a), '$seen'))" >>"$RAW"
	done < <(grep '^RESULT' "$OUT/$b-$mtu.out")
	[ "$n" -gt 0 ] || { log "$b at MTU $mtu: no result; see $OUT/$b-$mtu.err"; tail -5 "$OUT/$b-$mtu.err" >&2; }
	if [ -n "$pid" ] && [ "$n" -gt 0 ]; then
		local c1
		c1=$(daemon_cpu "$pid")
		python3 -c "print('%s\tcpu-%s\t1\t%.2f\tCPU s/GB\t' % ('$b', '$mtu', ($c1 - $c0) / ($n * $SIZE_MB / 1024.0)))" >>"$RAW"
	fi
	if [ -s "$OUT/qemu.cpu" ] && [ "$n" -gt 0 ]; then
		python3 -c "print('%s\tqemu-cpu-%s\t1\t%.2f\tCPU s/GB\t' % ('$b', '$mtu', $(cat "$OUT/qemu.cpu") / ($n * $SIZE_MB / 1024.0)))" >>"$RAW"
	fi
}

for mtu in $MTUS; do
	for b in $BACKENDS; do
		log "$b at MTU $mtu"
		S=$OUT/$b.sock
		case $b in
		ferry-stream)
			timeout 1200 "$FERRY" net --mtu "$mtu" --listen-qemu "unix://$S" --dns-upstream 127.0.0.1:9 2>"$OUT/$b.net.err" &
			P=$!; sleep 1
			run_guest "$b" "$mtu" "unix://$S" 10.0.2.254 "$P"
			kill $P; wait $P 2>/dev/null ;;
		ferry-vhost-user)
			timeout 1200 "$FERRY" net --mtu "$mtu" --listen-vhost-user "$S" --dns-upstream 127.0.0.1:9 2>"$OUT/$b.net.err" &
			P=$!; sleep 1
			run_guest "$b" "$mtu" "vhost-user://$S" 10.0.2.254 "$P"
			kill $P; wait $P 2>/dev/null ;;
		passt | passt-vhost-user)
			# passt drops to nobody before binding: its socket needs a world-writable directory.
			S=$(mktemp -u /tmp/ferry-bench-passt-XXXXXX.sock)
			mode=(); net="unix://$S"
			[ $b = passt-vhost-user ] && { mode=(--vhost-user); net="vhost-user://$S"; }
			timeout 1200 "$PASST" -f -q "${mode[@]}" -m "$mtu" -s "$S" -t none -u none 2>"$OUT/$b.net.err" &
			P=$!
			for _ in $(seq 50); do [ -S "$S" ] && break; sleep 0.1; done
			run_guest "$b" "$mtu" "$net" "" "$P"
			kill $P; wait $P 2>/dev/null; rm -f "$S" ;;
		qemu-slirp)
			[ "$mtu" = 1500 ] || continue
			: >"$S"
			QEMU_SLIRP=1 run_guest "$b" "$mtu" "unix://$S" 10.0.2.2 "" ;;
		*) log "unknown backend $b" ;;
		esac
	done
done
log "raw results in $RAW"
SHOW_RUNS=1 python3 bench/report.py guest "$RAW" docs/performance.md ferry-stream passt qemu-slirp
