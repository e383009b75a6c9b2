#!/bin/sh
# Runs slirp4netns's own test suite (tests/test-slirp4netns-*.sh from a
# checkout of rootless-containers/slirp4netns, given as $1) against ferry
# linked as `slirp4netns`, and against the real slirp4netns from the
# system, side by side. Prints one line per test: name, real, ferry.
#   bench/slirp4netns-suite.sh /path/to/slirp4netns-checkout
# Needs: ncat, libcap2-bin (getpcaps), util-linux, iproute2, slirp4netns.
# The tests start their own namespaces and talk to 127.0.0.1 and 10.0.2.x
# inside them only.
set -u
src=${1:?usage: bench/slirp4netns-suite.sh SLIRP4NETNS_CHECKOUT}
cd "$(dirname "$0")/.."
cargo build -q --bin ferry
ferry_dir=$(mktemp -d)
ln -s "$PWD/target/debug/ferry" "$ferry_dir/slirp4netns"
real=$(command -v slirp4netns || true)
work=$(mktemp -d)
trap 'rm -rf "$ferry_dir" "$work"' EXIT
run() { # $1 = directory holding slirp4netns first on PATH (or "" for the system's), $2 = test
    dir=$1; t=$2
    ( cd "$work" && PATH="${dir:+$dir:}$PATH" timeout 120 bash "$src/tests/$t" >"$work/$t.$3.log" 2>&1 )
    case $? in 0) echo pass ;; 77) echo skip ;; *) echo FAIL ;; esac
}
printf '%-48s %-8s %-8s\n' test slirp4netns ferry
for t in $(cd "$src/tests" && ls test-slirp4netns-*.sh); do
    r=-; [ -n "$real" ] && r=$(run "" "$t" real)
    f=$(run "$ferry_dir" "$t" ferry)
    printf '%-48s %-8s %-8s\n' "${t#test-slirp4netns-}" "$r" "$f"
    [ "$f" = FAIL ] && [ -n "${VERBOSE:-}" ] && tail -20 "$work/$t.ferry.log"
done
