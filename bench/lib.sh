# bench/lib.sh - helpers the bench scripts share; sourced (with ROOT set to
# the repository root and the current directory there), never run.

log() { echo "[$(date +%T)] $*" >&2; }

# cpu_of PID: the process's CPU seconds so far (utime + stime), 0 if gone.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# build_guest_bench: builds ferry (release) and the guest image; sets FERRY
# and exports FERRY_GUEST_INIT for the `ferry run` guests a bench boots.
build_guest_bench() {
	log "building ferry (release) and the guest image"
	cargo build --release --quiet -p ferry || exit 1
	scripts/build-guest-init >/dev/null || exit 1
	# FERRY_BIN: another build of ferry to run instead (A/B of a change).
	FERRY=${FERRY_BIN:-$ROOT/target/release/ferry}
	export FERRY_GUEST_INIT=$ROOT/target/x86_64-unknown-linux-gnu/release/ferry-guest-init
}
