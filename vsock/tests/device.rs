//! The vsock device through a software virtio driver (ferry-driver's split
//! queues over plain memory) and real unix sockets on the host side.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use ferry_driver::split_queue::{Buffer, SplitQueue};
use ferry_vsock::device::VsockDevice;
use ferry_vsock::packet::*;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GUEST_CID: u64 = 3;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUF: u64 = 0x20_0000;

struct Guest {
    mem: GuestMemoryMmap,
    rx: SplitQueue,
    tx: SplitQueue,
    rx_dev: Queue,
    tx_dev: Queue,
    rx_offered: u64,
    tx_at: u64,
}

impl Guest {
    fn new() -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let rx = SplitQueue::new(0, 64);
        let tx = SplitQueue::new(0x8000, 64);
        let (rx_dev, tx_dev) = (rx.device_queue(), tx.device_queue());
        Guest {
            mem,
            rx,
            tx,
            rx_dev,
            tx_dev,
            rx_offered: 0,
            tx_at: TX_BUF,
        }
    }

    fn offer_rx(&mut self, n: u64) {
        self.offer_rx_sized(n, 4096 + HEADER_LEN as u32);
    }

    fn offer_rx_sized(&mut self, n: u64, size: u32) {
        for _ in 0..n {
            let at = RX_BUFS + (self.rx_offered % 64) * 0x2000;
            self.rx.offer(&self.mem, &[Buffer::writable(at, size)]).unwrap();
            self.rx_offered += 1;
        }
    }

    fn send(&mut self, dev: &mut VsockDevice, op: u16, src_port: u32, dst_port: u32, flags: u32, data: &[u8]) {
        let h = Header {
            src_cid: GUEST_CID,
            dst_cid: 2,
            src_port,
            dst_port,
            len: data.len() as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: 65536,
            fwd_cnt: 0,
        };
        let at = self.tx_at;
        // Each packet is consumed before the next is sent: reuse memory.
        self.tx_at = if self.tx_at + 0x2_0000 > 0x40_0000 {
            TX_BUF
        } else {
            self.tx_at + 0x1_0000
        };
        self.mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + HEADER_LEN as u64))
            .unwrap();
        let mut bufs = vec![Buffer::readable(at, HEADER_LEN as u32)];
        if !data.is_empty() {
            bufs.push(Buffer::readable(at + HEADER_LEN as u64, data.len() as u32));
        }
        self.tx.offer(&self.mem, &bufs).unwrap();
        assert!(dev.process_tx(&mut self.tx_dev, &self.mem).unwrap());
    }

    /// The next packet the device puts in the receive queue, polling the
    /// host side until one comes.
    fn recv(&mut self, dev: &mut VsockDevice) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            dev.poll_host();
            dev.fill_rx(&mut self.rx_dev, &self.mem).unwrap();
            if let Some((id, len)) = self.rx.pop_used(&self.mem) {
                let at = RX_BUFS + (u64::from(id) % 64) * 0x2000;
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
                let h = Header::parse(&b).expect("a header");
                return (h, b[HEADER_LEN..].to_vec());
            }
            assert!(Instant::now() < deadline, "no packet for the guest");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn sock_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ferry-vsock-{tag}-{}.sock", std::process::id()))
}

#[test]
fn guest_connects_to_a_host_socket_and_data_flows_both_ways() {
    let uds = sock_path("g2h");
    let mut dev = VsockDevice::new(GUEST_CID, &uds).unwrap();
    let host = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = host.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n]).unwrap();
        s.write_all(b"!").unwrap();
    });
    let mut g = Guest::new();
    g.offer_rx(8);
    g.send(&mut dev, OP_REQUEST, 1111, 5000, 0, &[]);
    let (h, _) = g.recv(&mut dev);
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (OP_RESPONSE, 5000, 1111, GUEST_CID)
    );
    g.send(&mut dev, OP_RW, 1111, 5000, 0, b"ping");
    let mut got = Vec::new();
    while got.len() < 5 {
        let (h, data) = g.recv(&mut dev);
        if h.op == OP_RW {
            got.extend(data);
        }
    }
    assert_eq!(got, b"ping!");
    echo.join().unwrap();
    // The host closed: the guest is told, answers RST, and it is gone.
    let (h, _) = g.recv(&mut dev);
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
    g.send(&mut dev, OP_RST, 1111, 5000, 0, &[]);
    assert_eq!(dev.connections(), 0);

    // Nobody listens on port 6000: the guest's REQUEST is refused.
    g.send(&mut dev, OP_REQUEST, 1112, 6000, 0, &[]);
    assert_eq!(g.recv(&mut dev).0.op, OP_RST);
}

#[test]
fn host_connects_to_a_guest_port_with_the_hybrid_handshake() {
    let uds = sock_path("h2g");
    let mut dev = VsockDevice::new(GUEST_CID, &uds).unwrap();
    let mut g = Guest::new();
    g.offer_rx(8);
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = g.recv(&mut dev);
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024));
    g.send(&mut dev, OP_RESPONSE, 1024, req.src_port, 0, &[]);
    let mut reader = BufReader::new(host.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {}\n", req.src_port));
    g.send(&mut dev, OP_RW, 1024, req.src_port, 0, b"hello host");
    dev.poll_host();
    let mut buf = [0u8; 10];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    host.write_all(b"hello guest").unwrap();
    let (h, data) = g.recv(&mut dev);
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"hello guest"[..]));

    // A bad first line is answered and closed.
    let mut bad = UnixStream::connect(&uds).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    dev.poll_host();
    dev.poll_host();
    let mut reply = String::new();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = bad.read_to_string(&mut reply);
    assert!(reply.starts_with("ERROR"), "{reply}");
}

#[test]
fn packets_for_other_addresses_or_past_the_credit_are_reset() {
    let uds = sock_path("bad");
    let mut dev = VsockDevice::new(GUEST_CID, &uds).unwrap();
    let mut g = Guest::new();
    g.offer_rx(8);
    // Data on a connection that does not exist.
    g.send(&mut dev, OP_RW, 1, 2, 0, b"x");
    assert_eq!(g.recv(&mut dev).0.op, OP_RST);
    // A header alone with a length that claims more than was sent.
    g.send(&mut dev, 99, 1, 2, 0, &[]);
    assert_eq!(g.recv(&mut dev).0.op, OP_RST);
    assert_eq!(dev.connections(), 0);
}

#[test]
fn host_data_larger_than_a_receive_buffer_is_split_not_lost() {
    let uds = sock_path("split");
    let mut dev = VsockDevice::new(GUEST_CID, &uds).unwrap();
    let mut g = Guest::new();
    g.offer_rx(1);
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = g.recv(&mut dev);
    g.send(&mut dev, OP_RESPONSE, 1024, req.src_port, 0, &[]);
    let mut line = String::new();
    BufReader::new(host.try_clone().unwrap()).read_line(&mut line).unwrap();
    // 10 KB from the host into 100-byte guest buffers, 8 at a time.
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&data).unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        g.offer_rx_sized(1, 100);
        let (h, payload) = g.recv(&mut dev);
        assert_eq!(h.op, OP_RW);
        assert!(payload.len() <= 100 - HEADER_LEN);
        got.extend(payload);
    }
    assert_eq!(got, data);
}

/// The connection table is bounded: past MAX_CONNECTIONS a guest's REQUEST
/// is reset and a host program is told ERROR; control packets for a guest
/// that never reads stop queueing. Each refusal is counted.
#[test]
fn connections_and_queued_packets_are_bounded() {
    use ferry_vsock::device::MAX_CONNECTIONS;
    let uds = sock_path("bound");
    let mut dev = VsockDevice::new(GUEST_CID, &uds).unwrap();
    let host = UnixListener::bind(format!("{}_7000", uds.display())).unwrap();
    let acceptor = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(host.accept().unwrap().0);
        }
        held
    });
    let mut g = Guest::new();
    for port in 0..MAX_CONNECTIONS as u32 {
        g.send(&mut dev, OP_REQUEST, 10_000 + port, 7000, 0, &[]);
    }
    let held = acceptor.join().unwrap();
    assert_eq!(dev.connections(), MAX_CONNECTIONS);
    assert_eq!(dev.refused(), 0);
    g.send(&mut dev, OP_REQUEST, 9_999, 7000, 0, &[]);
    assert_eq!(dev.connections(), MAX_CONNECTIONS);
    assert_eq!(dev.refused(), 1);
    let mut late = UnixStream::connect(&uds).unwrap();
    dev.poll_host();
    let mut reply = String::new();
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = late.read_to_string(&mut reply);
    assert!(reply.starts_with("ERROR too many"), "{reply}");
    assert_eq!(dev.refused(), 2);
    drop(held);

    // A guest that sends to nobody and posts no receive buffers: the
    // resets it is owed stop queueing at the bound.
    let mut dev = VsockDevice::new(GUEST_CID, &sock_path("queue")).unwrap();
    for i in 0..5000u32 {
        g.send(&mut dev, OP_RW, i, 1, 0, &[]);
    }
    assert!(dev.refused() >= 5000 - 4096, "{} refused", dev.refused());
    // Once it reads, what was queued comes out in order.
    g.offer_rx(8);
    assert_eq!(g.recv(&mut dev).0.op, OP_RST);
}
