#!/usr/bin/env bash
# bench/soak.sh - ferry net under load for a long time, watching its memory,
# descriptors and CPU (issue #20's soak goals):
#   1. idle RSS with a namespace attached;
#   2. 10,000 concurrent TCP connections from the namespace to an echo
#      server on the host's loopback (through the host alias), each echoing
#      a checked message every 5 s, held for DURATION seconds (600);
#   3. RSS and descriptors after they all closed (no growth);
#   4. SHORT short connections (1,000,000) at 256 in flight: rate, CPU;
#   5. UDP flow churn: 20,000 source ports (past the 4,096-flow table) to a
#      host echo; the daemon must stay up and bounded.
# Every byte is checked; "lost" counts mismatches and missing echoes.
# Goals: <= 10 MiB RSS idle, <= 8 MiB per 1,000 flows, no fd or memory
# growth across the run, nothing lost. ferry alone (the peers' soak
# behaviour is not the question here).
# Traffic stays inside a namespace this script creates and the host's
# loopback.  Usage: bench/soak.sh   Env: DURATION=600 SHORT=1000000 FLOWS=10000
set -u
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-600}
SHORT=${SHORT:-1000000}
FLOWS=${FLOWS:-10000}
OUT=${OUT:-$ROOT/target/bench/soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RAW=$OUT/raw.tsv
log() { echo "[$(date +%T)] $*" >&2; }
log "building ferry (release)"
cargo build --release --quiet -p ferry || exit 1
ulimit -n "$(ulimit -Hn)"
unshare --net sleep 100000 &
HOLDER=$!
trap 'kill $HOLDER $FERRY_PID 2>/dev/null' EXIT
sleep 0.5
# A million short connections from one address: reuse TIME_WAIT ports and
# use the whole port range inside the namespace (the host side is loopback,
# where Linux reuses them already).
nsenter --net=/proc/$HOLDER/ns/net sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
target/release/ferry net --netns "$HOLDER" --configure --max-tcp-flows $((FLOWS + 2048)) \
	--dns-upstream 127.0.0.1:9 2>"$OUT/ferry.log" &
FERRY_PID=$!
for _ in $(seq 1 100); do grep -q "network ready" "$OUT/ferry.log" && break; sleep 0.1; done
grep -q "network ready" "$OUT/ferry.log" || { cat "$OUT/ferry.log"; exit 1; }
timeout $((DURATION + 3600)) python3 - "$FERRY_PID" "$HOLDER" "$DURATION" "$SHORT" "$FLOWS" >"$RAW" <<'PY'
import asyncio, os, resource, subprocess, sys, time
pid, holder, duration, short, flows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
TCP, UDP = 17001, 17002
def log(*a):
    print("[soak]", *a, file=sys.stderr, flush=True)
def sample():
    st = open("/proc/%s/status" % pid).read()
    rss = int(next(l for l in st.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024
    fds = len(os.listdir("/proc/%s/fd" % pid))
    f = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
    cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, cpu
def row(test, value, unit, extra=""):
    print("ferry\t%s\t1\t%s\t%s\t%s" % (test, value, unit, extra), flush=True)

async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    writer.close()
class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a): self.t.sendto(d, a)

CLIENT = r'''
import asyncio, os, resource, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
mode, n, arg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lost = 0
HOST = "10.0.2.254"
async def held(i, stop):
    global lost
    try:
        r, w = await asyncio.open_connection(HOST, 17001)
    except OSError:
        lost += 1
        return
    k = 0
    while time.monotonic() < stop:
        msg = (b"%08d:%08d:" % (i, k)) * 4
        w.write(msg)
        await w.drain()
        try:
            got = await asyncio.wait_for(r.readexactly(len(msg)), 30)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            lost += 1
            return
        if got != msg:
            lost += 1
        k += 1
        await asyncio.sleep(5)
    w.close()
async def short_one(i):
    global lost
    try:
        r, w = await asyncio.open_connection(HOST, 17001)
        msg = b"%016d" % i
        w.write(msg)
        got = await asyncio.wait_for(r.readexactly(len(msg)), 30)
        lost += got != msg
        w.close()
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        lost += 1
async def main():
    global lost
    if mode == "held":
        stop = time.monotonic() + arg
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(held(i, stop)))
            if i % 500 == 499:
                await asyncio.sleep(0.2)
        print("OPEN", flush=True)
        await asyncio.gather(*tasks)
    elif mode == "short":
        sem = asyncio.Semaphore(arg)
        async def one(i):
            async with sem:
                await short_one(i)
        batch = 20000
        for s in range(0, n, batch):
            await asyncio.gather(*(one(i) for i in range(s, min(n, s + batch))))
    else:
        loop = asyncio.get_running_loop()
        got = 0
        class P(asyncio.DatagramProtocol):
            def datagram_received(self, d, a):
                nonlocal got
                got += 1
        ts = []
        for i in range(n):
            t, _ = await loop.create_datagram_endpoint(P, remote_addr=(HOST, 17002))
            t.sendto(b"u%d" % i)
            ts.append(t)
            if len(ts) >= 500:
                await asyncio.sleep(0.05)
                for t in ts: t.close()
                ts = []
        await asyncio.sleep(1)
        for t in ts: t.close()
        lost = n - got
    print("LOST", lost, flush=True)
asyncio.run(main())
'''
async def client(*args):
    p = await asyncio.create_subprocess_exec("nsenter", "--net=/proc/%s/ns/net" % holder, "python3", "-c", CLIENT, *map(str, args),
                                             stdout=asyncio.subprocess.PIPE)
    return p
async def main():
    await asyncio.start_server(echo, "127.0.0.1", TCP, backlog=4096)
    await loop_udp()
    await asyncio.sleep(1)
    rss0, fds0, cpu0 = sample()
    row("rss-idle", "%.1f" % rss0, "MiB")
    log("idle: %.1f MiB, %d fds" % (rss0, fds0))
    p = await client("held", flows, duration)
    line = await p.stdout.readline()
    await asyncio.sleep(10)
    rss1, fds1, cpu1 = sample()
    per = (rss1 - rss0) / (flows / 1000)
    row("rss-%dk-flows" % (flows // 1000), "%.1f" % rss1, "MiB")
    row("per-1000-flows", "%.2f" % per, "MiB")
    log("%d flows open: %.1f MiB (%.2f MiB per 1000), %d fds" % (flows, rss1, per, fds1))
    peak = rss1
    end = time.monotonic() + duration
    while p.returncode is None and time.monotonic() < end + 60:
        try:
            await asyncio.wait_for(p.wait(), 30)
        except asyncio.TimeoutError:
            peak = max(peak, sample()[0])
    out = (await p.stdout.read()).decode()
    lost_held = int(out.split("LOST")[1]) if "LOST" in out else flows
    row("held-lost", lost_held, "conns", "%d s" % duration)
    await asyncio.sleep(15)
    rss2, fds2, cpu2 = sample()
    row("rss-after-held", "%.1f" % rss2, "MiB", "peak %.1f" % peak)
    row("fds-growth", fds2 - fds0, "fds")
    log("after: %.1f MiB (peak %.1f), %d fds (idle %d), lost %d" % (rss2, peak, fds2, fds0, lost_held))
    t0 = time.monotonic()
    p = await client("short", short, 256)
    out = (await p.communicate())[0].decode()
    dt = time.monotonic() - t0
    rss3, fds3, cpu3 = sample()
    lost_short = int(out.split("LOST")[1]) if "LOST" in out else short
    row("short-conns", "%.0f" % (short / dt), "conn/s", "%d in %.0f s" % (short, dt))
    row("short-lost", lost_short, "conns")
    row("cpu-per-1k-short", "%.3f" % ((cpu3 - cpu2) / (short / 1000)), "s")
    log("short: %d in %.0f s (%.0f/s), lost %d, cpu %.1f s" % (short, dt, short / dt, lost_short, cpu3 - cpu2))
    p = await client("udp", 20000, 0)
    out = (await p.communicate())[0].decode()
    await asyncio.sleep(2)
    rss4, fds4, cpu4 = sample()
    row("udp-churn-lost", out.split("LOST")[1].strip() if "LOST" in out else "all", "datagrams", "20000 flows vs a 4096 table")
    await asyncio.sleep(70)
    rss5, fds5, _ = sample()
    row("rss-end", "%.1f" % rss5, "MiB")
    row("fds-end-growth", fds5 - fds0, "fds")
    row("cpu-total", "%.1f" % (cpu4 - cpu0), "s")
    log("end: %.1f MiB, %d fds, cpu %.1f s" % (rss5, fds5, cpu4 - cpu0))
async def loop_udp():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", UDP))
asyncio.run(main())
PY
rc=$?
[ "$rc" -eq 0 ] || { log "the load generator failed (rc $rc); no report"; cat "$OUT/ferry.log" | tail -5; exit 1; }
kill -0 "$FERRY_PID" 2>/dev/null && alive=yes || alive=no
echo -e "ferry\talive-at-end\t1\t$([ $alive = yes ] && echo 1 || echo 0)\tbool\t" >>"$RAW"
log "raw results in $RAW (python rc $rc, ferry alive: $alive)"
cat "$RAW"
python3 bench/report.py soak "$RAW" docs/performance.md
