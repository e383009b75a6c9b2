#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/TARGET/ (valid messages each
fuzz target starts from). Rerun after changing it: python3 fuzz/seeds/make.py
The frames seeds are captured frames and are kept as they are."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name + ".bin"), "wb") as f:
        f.write(data)


# --- DNS -------------------------------------------------------------------
def qname(name):
    out = b""
    for label in name.split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(qid, name, qtype, edns=False):
    arcount = 1 if edns else 0
    msg = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, arcount) + qname(name) + struct.pack(">HH", qtype, 1)
    if edns:
        msg += b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)
    return msg


put("dns", "a-host", query(1, "host.containers.internal", 1))
put("dns", "aaaa-gateway", query(2, "gateway.containers.internal", 28, edns=True))
put("dns", "a-test", query(3, "web.test", 1))
put("dns", "ptr", query(4, "2.2.0.10.in-addr.arpa", 12))
put("dns", "forward-mx", query(5, "example.org", 15, edns=True))
q = query(6, "host.docker.internal", 255)
put("dns", "tcp-framed", struct.pack(">H", len(q)) + q)
# A compression pointer in the question.
put("dns", "pointer", struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack(">HH", 1, 1))

# --- DHCP, DHCPv6, NDP payloads ----------------------------------------------
MAC = bytes.fromhex("02aabbccddee")


def bootp(msgtype, extra=b""):
    msg = struct.pack(">BBBBIHH", 1, 1, 6, 0, 0x1234, 0, 0x8000) + b"\0" * 16 + MAC + b"\0" * 10 + b"\0" * 192
    msg += b"\x63\x82\x53\x63" + bytes([53, 1, msgtype]) + extra + b"\xff"
    return msg


put("dhcp", "discover", bootp(1, bytes([55, 4, 1, 3, 6, 15]) + bytes([12, 3]) + b"web"))
put("dhcp", "request", bootp(3, bytes([50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2])))
put("dhcp", "release", bootp(7))
duid = struct.pack(">HH", 3, 1) + MAC
iana = struct.pack(">III", 1, 0, 0)
fqdn = bytes([0]) + qname("web")
put("dhcp", "solicit6",
    bytes([1, 0x12, 0x34, 0x56]) + struct.pack(">HH", 1, len(duid)) + duid
    + struct.pack(">HH", 3, len(iana)) + iana + struct.pack(">HH", 14, 0)
    + struct.pack(">HH", 39, len(fqdn)) + fqdn + struct.pack(">HHHH", 6, 4, 23, 24))
put("dhcp", "rs", bytes([133, 0, 0, 0, 0, 0, 0, 0, 1, 1]) + MAC)
put("dhcp", "ns", bytes([135, 0, 0, 0, 0, 0, 0, 0]) + bytes.fromhex("fe800000000000000000000000000001") + bytes([1, 1]) + MAC)

# --- FUSE requests (fuse_in_header + body) -----------------------------------
def fuse(opcode, nodeid, body, unique=2):
    return struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, nodeid, 0, 0, 0, 0, 0) + body


LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE = 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, OPENDIR, READDIR, RELEASEDIR, ACCESS, CREATE = 21, 22, 23, 24, 25, 27, 28, 29, 34, 35
READDIRPLUS, RENAME2, LSEEK, FALLOCATE, COPY_FILE_RANGE = 44, 45, 46, 43, 47
read_in = lambda fh, off, size: struct.pack("<QQIIQII", fh, off, size, 0, 0, 0, 0)
put("fuse", "lookup-open-read",
    fuse(LOOKUP, 1, b"dir\0") + fuse(LOOKUP, 2, b"file\0") + fuse(OPEN, 3, struct.pack("<II", 0, 0))
    + fuse(READ, 3, read_in(0, 0, 4096)) + fuse(RELEASE, 3, struct.pack("<QIIQ", 0, 0, 0, 0)))
put("fuse", "readdirplus",
    fuse(OPENDIR, 1, struct.pack("<II", 0, 0)) + fuse(READDIRPLUS, 1, read_in(0, 0, 4096))
    + fuse(READDIR, 1, read_in(0, 0, 4096)) + fuse(RELEASEDIR, 1, struct.pack("<QIIQ", 0, 0, 0, 0)))
put("fuse", "create-write",
    fuse(CREATE, 1, struct.pack("<IIII", 0o101, 0o644, 0o22, 0) + b"new\0")
    + fuse(WRITE, 3, struct.pack("<QQIIQII", 0, 0, 5, 0, 0, 0, 0) + b"hello")
    + fuse(FALLOCATE, 3, struct.pack("<QQQII", 0, 0, 4096, 0, 0))
    + fuse(LSEEK, 3, struct.pack("<QQII", 0, 0, 3, 0)))
put("fuse", "names",
    fuse(MKDIR, 1, struct.pack("<II", 0o755, 0o22) + b"d\0") + fuse(SYMLINK, 1, b"l\0dir/file\0")
    + fuse(READLINK, 4, b"") + fuse(RENAME, 1, struct.pack("<Q", 1) + b"d\0e\0")
    + fuse(LINK, 1, struct.pack("<Q", 3) + b"hard\0") + fuse(UNLINK, 1, b"hard\0") + fuse(RMDIR, 1, b"e\0")
    + fuse(LOOKUP, 1, b"..\0") + fuse(LOOKUP, 1, b"../etc\0"))
put("fuse", "xattr",
    fuse(SETXATTR, 1, struct.pack("<IIII", 6, 0, 0, 0) + b"user.a\0" + b"value!")
    + fuse(GETXATTR, 1, struct.pack("<II", 64, 0) + b"user.a\0") + fuse(LISTXATTR, 1, struct.pack("<II", 0, 0))
    + fuse(REMOVEXATTR, 1, b"user.a\0"))
put("fuse", "attrs",
    fuse(GETATTR, 1, struct.pack("<IIQ", 0, 0, 0)) + fuse(STATFS, 1, b"")
    + fuse(SETATTR, 1, struct.pack("<IIQQQQQQIIIIIII", 1 << 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0o700, 0, 0, 0))
    + fuse(ACCESS, 1, struct.pack("<II", 4, 0)) + fuse(FORGET, 2, struct.pack("<Q", 1)))

# --- virtqueues: descriptor table (16 x 16 bytes), 16 ring entries, index,
# then the payload at guest address 0x2000 ---------------------------------
def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def queue(which, descs, heads, payload):
    table = b"".join(descs).ljust(256, b"\0")
    ring = b"".join(struct.pack("<H", h) for h in heads).ljust(32, b"\0")
    return bytes([which]) + table + ring + struct.pack("<H", len(heads)) + payload


NEXT, WRITE_F, INDIRECT = 1, 2, 4
P = 0x2000
frame = bytes.fromhex("ffffffffffff02aabbccddee0806") + bytes(28)
hdr = bytes(12)
put("virtio", "net-tx", queue(0, [desc(P, 12, NEXT, 1), desc(P + 12, len(frame))], [0], hdr + frame))
put("virtio", "net-tx-one", queue(8, [desc(P, 12 + len(frame))], [0], hdr + frame))
put("virtio", "net-tx-indirect", queue(0, [desc(P + 0x100, 32, INDIRECT)], [0],
    hdr + frame + bytes(0x100 - 12 - len(frame)) + desc(P, 12, NEXT, 1) + desc(P + 12, len(frame))))
put("virtio", "net-rx", queue(2 | 32, [desc(P, 2048, WRITE_F), desc(P + 2048, 2048, WRITE_F)], [0, 1], frame))
put("virtio", "net-tx-loop", queue(0, [desc(P, 12, NEXT, 1), desc(P, 12, NEXT, 0)], [0], hdr))
init = fuse(26, 0, struct.pack("<IIII", 7, 38, 1 << 17, 0) + bytes(48), 1)
put("virtio", "fs", queue(4, [desc(P, len(init), NEXT, 1), desc(P + 0x1000, 0x1000, WRITE_F)], [0], init))
# vsock: header (44 bytes) — src_cid, dst_cid, src_port, dst_port, len, type, op, flags, buf_alloc, fwd_cnt.
def vsock(op, payload=b"", dst_port=1024, src_port=5000, flags=0):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, len(payload), 1, op, flags, 65536, 0) + payload


req = vsock(1)
put("virtio", "vsock", queue(6, [desc(P, 44)], [0], req))
put("vsock", "connect-send-close",
    vsock(1) + vsock(5, b"hello host") + vsock(7) + vsock(6) + vsock(4, flags=3) + vsock(3))
put("vsock", "refused", vsock(1, dst_port=9))
put("vsock", "data-unknown", vsock(5, b"no such connection"))

# --- vhost-user control messages: request, flags (version 1), size, body ---
def vu(req, body=b""):
    return struct.pack("<III", req, 1, len(body)) + body


GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 1, 2, 3, 4, 8, 9, 10, 11
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE, GET_CONFIG, SET_CONFIG = 15, 16, 17, 18, 24, 25
put("vhost_user", "handshake",
    vu(GET_FEATURES) + vu(SET_OWNER) + vu(GET_PROTOCOL_FEATURES) + vu(SET_PROTOCOL_FEATURES, struct.pack("<Q", 0x2_0000 | 0x200 | 1))
    + vu(GET_QUEUE_NUM) + vu(SET_FEATURES, struct.pack("<Q", 1 << 32 | 1 << 30)))
put("vhost_user", "vring",
    vu(SET_OWNER) + vu(SET_VRING_NUM, struct.pack("<II", 0, 256)) + vu(SET_VRING_BASE, struct.pack("<II", 0, 0))
    + vu(SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, 0x1000, 0x2000, 0x3000, 0)) + vu(SET_VRING_ENABLE, struct.pack("<II", 0, 1))
    + vu(GET_VRING_BASE, struct.pack("<II", 0, 0)))
put("vhost_user", "config", vu(GET_CONFIG, struct.pack("<III", 0, 40, 0) + bytes(40)) + vu(SET_CONFIG, struct.pack("<III", 0, 4, 0) + b"abcd"))

# --- control API and gvproxy's API (one connection each) ---------------------
def http(method, path, body=""):
    head = f"{method} {path} HTTP/1.1\r\nHost: d\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    # The target's first byte: 0, an endpoint without /connect.
    return b"\0" + (head + "\r\n" + body).encode()


put("api", "health", http("GET", "/health"))
put("api", "stats", http("GET", "/stats"))
put("api", "forward-add", http("POST", "/forwards", '{"publish":"127.0.0.1:18080:80/tcp","guest":"10.0.2.100"}'))
put("api", "forward-del", http("DELETE", "/forwards/tcp/127.0.0.1:18080"))
put("api", "dns-add", http("POST", "/dns/records", '{"name":"web","ip":"10.0.2.9","ip6":"fd00::9"}'))
put("api", "gvproxy-expose", http("POST", "/services/forwarder/expose", '{"local":"127.0.0.1:18081","remote":"192.168.127.2:22","protocol":"tcp"}'))
put("api", "gvproxy-all", http("GET", "/services/forwarder/all"))
put("api", "tunnel", http("GET", "/tunnel?ip=192.168.127.2&port=22"))
put("api", "connect", b"\x01" + http("POST", "/connect")[1:] + b"\x00\x2a" + frame)
put("api", "leases", http("GET", "/leases"))

# --- slirp4netns's API ------------------------------------------------------
put("slirp_api", "add", b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":18082,"guest_port":80}}')
put("slirp_api", "add-udp6", b'{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::1","host_port":18083,"guest_addr":"fd00::100","guest_port":53}}')
put("slirp_api", "list", b'{"execute":"list_hostfwd"}')
put("slirp_api", "remove", b'{"execute":"remove_hostfwd","arguments":{"id":1}}')
