#!/usr/bin/env bash
# bench/fs-guest.sh - a real project's files on a share, from inside a real
# guest: the steps users feel (unpacking a node_modules tree, walking it,
# reading it, grepping it, archiving it, deleting it), side by side in one
# run, one QEMU guest per backend (same kernel, memory, image and script):
#   ferry      ferry run -v (ferry fs: --cache auto, namespace sandbox)
#   virtiofsd  the same guest and device, its socket served by virtiofsd
#              (cargo install virtiofsd; --cache auto, its default sandbox)
#   tmpfs      the guest's own memory: the ceiling, no share involved
# The tree: `npm install` of a few large packages (PACKAGES), made on the
# host at the first run from the npm registry, tarred and cached in
# target/bench-cache/. The guest copies the tarball into its memory first,
# so every timed step touches only the backend under test.
# Steps (wall seconds inside the guest from /proc/uptime; caches dropped
# before each; the whole sequence RUNS times per guest, median shown with
# every run): unpack (tar x), stat (find + stat of every file), read (cat
# of every file), grep (grep -r for an absent string), tar (tar c of the
# tree, piped to wc), rm (rm -rf). cpu = CPU seconds the file server burned
# over the whole guest (lower is better; none for tmpfs).
# Under TCG (no usable KVM here) the guest's CPU is slow for every backend:
# compare ratios.
# Usage: bench/fs-guest.sh [backend ...]   Env: RUNS=3 PACKAGES="..."
# Only local files, unix sockets and the npm registry (first run) are used;
# every process runs under `timeout`.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
PACKAGES=${PACKAGES:-"webpack eslint @babel/core"}
BACKENDS=${*:-"ferry virtiofsd tmpfs"}
OUT=${OUT:-$ROOT/target/bench/fs-guest-$(date +%Y%m%d-%H%M%S)}
CACHE=$ROOT/target/bench-cache
mkdir -p "$OUT" "$CACHE"
RAW=$OUT/raw.tsv
: >"$RAW"
. "$ROOT/bench/lib.sh"
VIRTIOFSD=$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")
for c in qemu-system-x86_64 npm python3 timeout "$VIRTIOFSD"; do
	command -v "$c" >/dev/null || [ -x "$c" ] || { echo "missing $c: run scripts/install-deps (virtiofsd: cargo install virtiofsd)"; exit 1; }
done
build_guest_bench

key=$(echo "$PACKAGES" | sha256sum | cut -c1-12)
TARBALL=$CACHE/node_modules-$key.tar
if [ ! -s "$TARBALL" ]; then
	log "making the tree: npm install $PACKAGES (once; cached in $TARBALL)"
	rm -rf "$CACHE/npm-$key" && mkdir -p "$CACHE/npm-$key"
	(cd "$CACHE/npm-$key" && echo '{"name":"bench","version":"1.0.0"}' >package.json &&
		timeout 900 npm install --no-audit --no-fund --ignore-scripts $PACKAGES >"$OUT/npm.log" 2>&1) ||
		{ log "npm install failed: $OUT/npm.log"; exit 1; }
	tar cf "$TARBALL.tmp" -C "$CACHE/npm-$key" node_modules && mv "$TARBALL.tmp" "$TARBALL"
	rm -rf "$CACHE/npm-$key"
fi
FILES=$(tar tf "$TARBALL" | grep -vc '/$')
log "tree: $FILES files, $(($(stat -c %s "$TARBALL") >> 20)) MiB"

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
}
trap cleanup EXIT

# A QEMU wrapper for virtiofsd: the /work share (ferry1: -v order) has its
# vhost-user-fs socket swapped
# for virtiofsd's; everything else about the guest stays as ferry run made it.
cat >"$OUT/qemu-virtiofsd" <<W
#!/bin/sh
for a; do
	shift
	case \$a in socket,id=ferry1chr,path=*) set -- "\$@" "socket,id=ferry1chr,path=$OUT/virtiofsd.sock" ;; *) set -- "\$@" "\$a" ;; esac
done
exec qemu-system-x86_64 "\$@"
W
chmod +x "$OUT/qemu-virtiofsd"

# The guest's side. D is where the tree goes; the tarball comes in through
# a read-only share and is copied to memory before anything is timed.
GUEST='set -e
cp /src/tree.tar /tmp/tree.tar
t() { sync; echo 3 >/proc/sys/vm/drop_caches; a=$(cut -d" " -f1 /proc/uptime); "$@"; b=$(cut -d" " -f1 /proc/uptime); echo "RESULT $STEP $a $b"; }
for i in $(seq 1 '$RUNS'); do
  mkdir -p $D/w
  STEP=unpack t tar xf /tmp/tree.tar -C $D/w
  STEP=stat t sh -c "find $D/w -print0 | xargs -0 stat -c %s >/dev/null"
  STEP=read t sh -c "find $D/w -type f -print0 | xargs -0 cat >/dev/null"
  STEP=grep t sh -c "! grep -r ferry-bench-absent-needle $D/w >/dev/null"
  STEP=tar t sh -c "tar cf - -C $D/w . | wc -c >/dev/null"
  STEP=rm t rm -rf $D/w
done
echo DONE'

for b in $BACKENDS; do
	log "$b"
	SHARE=$OUT/share-$b
	rm -rf "$SHARE" && mkdir -p "$SHARE" "$OUT/src"
	ln -f "$TARBALL" "$OUT/src/tree.tar" 2>/dev/null || cp "$TARBALL" "$OUT/src/tree.tar"
	args=(--memory 2048 -v "$OUT/src:/src:ro")
	D=/tmp
	fs_pid=""
	case $b in
	ferry) args+=(-v "$SHARE:/work"); D=/work ;;
	virtiofsd)
		rm -f "$OUT/virtiofsd.sock"
		timeout 1800 "$VIRTIOFSD" --socket-path="$OUT/virtiofsd.sock" --shared-dir="$SHARE" --cache auto 2>"$OUT/virtiofsd.daemon.err" &
		PIDS+=($!)
		for _ in $(seq 50); do [ -S "$OUT/virtiofsd.sock" ] && break; sleep 0.1; done
		# virtiofsd forks its worker after setting up the sandbox: the last
		# process with this socket is the one serving requests.
		sleep 0.5
		fs_pid=$(pgrep -f -- "--socket-path=$OUT/virtiofsd.sock" | tail -1)
		args+=(-v "$SHARE:/work" --qemu "$OUT/qemu-virtiofsd"); D=/work ;;
	tmpfs) ;;
	*) log "unknown backend $b"; continue ;;
	esac
	c0=0
	[ -n "$fs_pid" ] && c0=$(cpu_of "$fs_pid")
	# A guest that stops making progress (seen once with virtiofsd: guest
	# and server idle, a request never completed) is ended after GUEST_MAX
	# seconds; the steps it finished are still reported.
	timeout "${GUEST_MAX:-1500}" "$FERRY" run "${args[@]}" -e "D=$D" -- sh -c "$GUEST" >"$OUT/$b.out" 2>"$OUT/$b.err" &
	run=$!
	if [ "$b" = ferry ]; then
		# ferry run's file server: its child `ferry fs` serving /work.
		for _ in $(seq 100); do
			fs_pid=$(pgrep -f -- " fs --socket-dir " | head -1)
			[ -n "$fs_pid" ] && break
			sleep 0.1
		done
		c0=$(cpu_of "$fs_pid")
	fi
	cpu=0
	while kill -0 $run 2>/dev/null; do
		[ -n "$fs_pid" ] && c=$(cpu_of "$fs_pid") && [ "$c" != 0 ] && cpu=$c
		sleep 0.5
	done
	wait $run
	grep -q '^DONE' "$OUT/$b.out" || { log "$b: the guest did not finish (partial results kept); see $OUT/$b.err"; tail -5 "$OUT/$b.err" >&2; }
	declare -A n=()
	while read -r _ step a c; do
		n[$step]=$((${n[$step]:-0} + 1))
		python3 -c "print('%s\t%s\t%d\t%.2f\ts\t' % ('$b', '$step', ${n[$step]}, $c - $a))" >>"$RAW"
	done < <(grep '^RESULT' "$OUT/$b.out")
	unset n
	if [ -n "$fs_pid" ]; then
		python3 -c "print('%s\tcpu\t1\t%.2f\tCPU s\t' % ('$b', max(0.0, $cpu - $c0)))" >>"$RAW"
	fi
	[ "$b" = virtiofsd ] && { kill "${PIDS[-1]}" 2>/dev/null; wait "${PIDS[-1]}" 2>/dev/null; }
done
log "raw results in $RAW"
# Times: lower is better, so the ratios report.py prints for seconds are
# inverted (speed = reference time / backend time) with INVERT=1.
SHOW_RUNS=1 INVERT=1 python3 bench/report.py fs-guest "$RAW" docs/performance.md virtiofsd tmpfs
