//! Small x86_64 programs, assembled at test time with the GNU assembler,
//! run under this machine's real KVM in 64-bit mode through ferry's
//! `Hypervisor` trait.

#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::Command;

use ferry_driver::split_queue::{Buffer, SplitQueue};
use ferry_vmm::hypervisor::kvm::{KvmHypervisor, KvmVcpu, KvmVm};
use ferry_vmm::hypervisor::{Hypervisor, LongModeEntry, Vcpu, Vm};
use ferry_vmm::machine::{CapturedOutput, Irq, Machine, Stop, EXIT_PORT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const LOAD_ADDR: u64 = 0x10_0000;
const MEM_SIZE: usize = 64 << 20;

/// Assembles `source` (AT&T syntax, 64-bit) into flat machine code.
fn assemble(name: &str, source: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("ferry-asm-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, obj, bin) = (dir.join("p.S"), dir.join("p.o"), dir.join("p.bin"));
    std::fs::write(&src, format!(".code64\n.text\n{source}\n")).unwrap();
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src)),
        "the GNU assembler (binutils) is needed: apt-get install binutils"
    );
    assert!(ok(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(&bin)));
    let code = std::fs::read(&bin).unwrap();
    let _ = std::fs::remove_dir_all(PathBuf::from(&dir));
    code
}

// Programs end by writing their status to EXIT_PORT (QEMU's
// isa-debug-exit convention): with the in-kernel interrupt controller,
// `hlt` waits in KVM for an interrupt instead of exiting to the VMM.

/// What a program did: serial output, port writes, how it ended.
#[derive(Debug, Default)]
struct Outcome {
    serial: String,
    ports: Vec<(u16, u8)>,
    exit: Option<u8>,
    boot_time: Option<std::time::Duration>,
}

/// Runs `source` on a vCPU thread; a program that neither exits nor
/// faults within 60 s fails the test instead of hanging it.
fn run_program(name: &str, source: &str) -> Outcome {
    let (name, source) = (name.to_string(), source.to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_on_vcpu(&name, &source));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the guest program did not finish within 60 s")
}

/// KVM, if this machine has it; tests say so and return when it does not.
fn kvm() -> Option<KvmHypervisor> {
    match KvmHypervisor::open() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("SKIP: no usable /dev/kvm here ({e}); these programs need real KVM");
            None
        }
    }
}

fn run_on_vcpu(name: &str, source: &str) -> Outcome {
    let code = assemble(name, source);
    let (machine, mut vcpu, _vm, serial) = boot(&code);
    let mut ports = Vec::new();
    let stop = machine
        .run(&mut vcpu, &mut |_, port, b| {
            ports.push((port, b));
            None
        })
        .unwrap();
    let boot_time = machine.bus().boot_time;
    Outcome {
        serial: String::from_utf8_lossy(&serial.contents()).into_owned(),
        ports,
        exit: match stop {
            Stop::Exit(code) => Some(code),
            other => panic!("the program stopped with {other:?}"),
        },
        boot_time,
    }
}

/// A machine with `code` loaded at [`LOAD_ADDR`] and a vCPU about to run
/// it in 64-bit mode (the VM is returned to keep it alive).
fn boot(code: &[u8]) -> (Machine, KvmVcpu, KvmVm, CapturedOutput) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(code, GuestAddress(LOAD_ADDR)).unwrap();
    let (cr3, gdt_base, gdt_limit) = ferry_vmm::x86_64::write_boot_tables(&mem).unwrap();
    let kvm = KvmHypervisor::open().expect("/dev/kvm");
    let mut vm = kvm.create_vm().unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap();
    // SAFETY: the machine owns `mem` and is returned with the VM; tests
    // drop them together.
    unsafe { vm.map_memory(0, 0, host, MEM_SIZE as u64) }.unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.enter_long_mode(&LongModeEntry {
        rip: LOAD_ADDR,
        rsp: 0x8_0000,
        rsi: 0,
        cr3,
        gdt_base,
        gdt_limit,
    })
    .unwrap();
    let serial = CapturedOutput::default();
    (Machine::new(mem, Box::new(serial.clone()), Irq(None)), vcpu, vm, serial)
}

#[test]
fn a_program_prints_to_the_serial_port_and_exits() {
    if kvm().is_none() {
        return;
    }
    let out = run_program(
        "hello",
        r#"
            lea msg(%rip), %rsi
            mov $msg_len, %rcx
            mov $0x3f8, %dx
        1:  lodsb
            out %al, (%dx)
            loop 1b
            mov $123, %al
            out %al, $0x80
            mov $0x42, %al
            out %al, $0x99
            mov $0x501, %dx
            mov $7, %al
            out %al, (%dx)
        msg: .ascii "hello from 64-bit guest code\n"
        .set msg_len, . - msg
        "#,
    );
    assert_eq!(out.serial, "hello from 64-bit guest code\n");
    assert!(out.boot_time.is_some(), "the boot timer was not recorded");
    assert_eq!(out.ports, [(0x99, 0x42)]);
    assert_eq!(out.exit, Some(7));
}

const MMIO_BASE: u64 = 0xd000_0000;
const RING: u64 = 0x20_0000;
const BUFS: u64 = 0x30_0000;
const MAILBOX: u64 = 0x2f_0000;
const PHASE_PORT: u16 = 0x502;

fn fuse_request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut r = ferry_driver::fuse::header(40 + body.len() as u32, opcode, unique, nodeid);
    r.extend_from_slice(body);
    r
}

/// A guest program drives the virtio-mmio registers itself (status,
/// feature negotiation, queue setup, notify) and exchanges FUSE requests
/// with ferry's in-process virtio-fs device; the requests are laid in its
/// memory by the test between phases, the way firmware tables are.
#[test]
fn a_program_reads_a_host_file_through_in_process_virtio_fs() {
    use ferry_vmm::virtio_mmio::MmioTransport;

    let share = std::env::temp_dir().join(format!("ferry-kvm-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "bytes from a host file\n").unwrap();
    let fs = ferry_fs::device::FsDevice::new(&share, &ferry_fs::FsOptions::default()).unwrap();
    let transport = MmioTransport::new(Box::new(ferry_vmm::devices::VirtioFs::new(fs, "share", 1)));

    let queue = SplitQueue::new(RING, 16);
    let (desc, avail, used) = queue.addresses();
    let source = format!(
        r#"
            mov ${MMIO_BASE:#x}, %rbx
            cmpl $0x74726976, (%rbx)
            jne fail
            cmpl $26, 8(%rbx)
            jne fail
            movl $1, 0x70(%rbx)
            movl $3, 0x70(%rbx)
            movl $1, 0x14(%rbx)
            movl 0x10(%rbx), %eax
            test $1, %eax
            jz fail
            movl $1, 0x24(%rbx)
            movl $1, 0x20(%rbx)
            movl $0, 0x24(%rbx)
            movl $0, 0x20(%rbx)
            movl $0xb, 0x70(%rbx)
            movl 0x70(%rbx), %eax
            test $8, %eax
            jz fail
            movl $1, 0x30(%rbx)
            cmpl $0, 0x34(%rbx)
            je fail
            movl $16, 0x38(%rbx)
            movl ${desc:#x}, 0x80(%rbx)
            movl $0, 0x84(%rbx)
            movl ${avail:#x}, 0x90(%rbx)
            movl $0, 0x94(%rbx)
            movl ${used:#x}, 0xa0(%rbx)
            movl $0, 0xa4(%rbx)
            movl $1, 0x44(%rbx)
            movl $0xf, 0x70(%rbx)
            mov $1, %ecx
        again:
            movl $1, 0x50(%rbx)
        wait:
            movzwl {used_idx:#x}, %eax
            cmp %ecx, %eax
            jb wait
            movl 0x60(%rbx), %eax
            movl %eax, 0x64(%rbx)
            mov ${PHASE_PORT:#x}, %dx
            mov %cl, %al
            out %al, (%dx)
            cmpl $0, {MAILBOX:#x}
            je done
            movl $0, {MAILBOX:#x}
            inc %ecx
            jmp again
        done:
        "#,
        used_idx = used + 2,
    );
    if kvm().is_none() {
        return;
    }
    let code = assemble("virtio-fs", &finish(&source));
    let (mut machine, mut vcpu, _vm, _) = boot(&code);
    machine.add_device(MMIO_BASE, transport);

    // The requests, one per phase; each reply is read before the next is
    // written (LOOKUP's node id feeds OPEN, OPEN's handle feeds READ).
    let mut ring = queue;
    let mut phase = 0u64;
    let offer = |mem: &GuestMemoryMmap, ring: &mut SplitQueue, n: u64, req: &[u8]| {
        let at = BUFS + n * 0x2000;
        mem.write_slice(req, GuestAddress(at)).unwrap();
        ring.offer(
            mem,
            &[
                Buffer::readable(at, req.len() as u32),
                Buffer::writable(at + 0x1000, 0x1000),
            ],
        )
        .unwrap();
    };
    let reply = |mem: &GuestMemoryMmap, n: u64| -> (i32, Vec<u8>) {
        let mut hdr = [0u8; 16];
        mem.read_slice(&mut hdr, GuestAddress(BUFS + n * 0x2000 + 0x1000))
            .unwrap();
        let len = u32::from_le_bytes(hdr[0..4].try_into().unwrap()) as usize;
        let error = i32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let mut body = vec![0u8; len.saturating_sub(16).min(0x1000 - 16)];
        mem.read_slice(&mut body, GuestAddress(BUFS + n * 0x2000 + 0x1010))
            .unwrap();
        (error, body)
    };
    let mut init = Vec::new();
    for v in [7u32, 31, 128 << 10, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    offer(&machine.mem, &mut ring, 0, &fuse_request(26, 1, 0, &init));
    let mut content = None;
    let stop = machine
        .run(&mut vcpu, &mut |m, port, _| {
            if port != PHASE_PORT {
                return Some(Stop::Error(format!("unexpected port {port:#x}")));
            }
            let (error, body) = reply(&m.mem, phase);
            assert_eq!(error, 0, "request {phase} failed");
            let next = match phase {
                0 => Some(fuse_request(1, 2, 1, b"hello.txt\0")),
                1 => {
                    let nodeid = u64::from_le_bytes(body[0..8].try_into().unwrap());
                    Some(fuse_request(14, 3, nodeid, &[0u8; 8]))
                }
                2 => {
                    let fh = u64::from_le_bytes(body[0..8].try_into().unwrap());
                    let (_, lookup) = reply(&m.mem, 1);
                    let nodeid = u64::from_le_bytes(lookup[0..8].try_into().unwrap());
                    let mut read = fh.to_le_bytes().to_vec();
                    read.extend_from_slice(&0u64.to_le_bytes());
                    read.extend_from_slice(&1024u32.to_le_bytes());
                    read.extend_from_slice(&[0u8; 20]);
                    Some(fuse_request(15, 4, nodeid, &read))
                }
                _ => {
                    content = Some(String::from_utf8_lossy(&body).into_owned());
                    None
                }
            };
            phase += 1;
            if let Some(req) = next {
                offer(&m.mem, &mut ring, phase, &req);
                m.mem.write_obj(1u32, GuestAddress(MAILBOX)).unwrap();
            }
            None
        })
        .unwrap();
    let exit = match stop {
        Stop::Exit(code) => Some(code),
        other => panic!("stopped with {other:?} in phase {phase}"),
    };
    assert_eq!(exit, Some(0), "the guest program failed its checks of the device");
    assert_eq!(content.as_deref(), Some("bytes from a host file\n"));
    // One interrupt per notified request, each acknowledged by the guest.
    let bus = machine.bus();
    let t = bus.device(MMIO_BASE).unwrap();
    assert_eq!((t.interrupts_raised(), t.interrupt_pending()), (4, false));
    std::fs::remove_dir_all(&share).unwrap();
}

/// Ends a device program: falling off `body` exits with status 0; its
/// `fail` label exits with status 1.
fn finish(body: &str) -> String {
    format!(
        "{body}\n mov ${EXIT_PORT:#x}, %dx\n mov $0, %al\n out %al, (%dx)\n\
         fail:\n mov ${EXIT_PORT:#x}, %dx\n mov $1, %al\n out %al, (%dx)\n"
    )
}

/// Receive and transmit queues for the two-queue devices (net, vsock).
fn rx_tx_queues() -> (
    ferry_driver::split_queue::SplitQueue,
    ferry_driver::split_queue::SplitQueue,
) {
    use ferry_driver::split_queue::SplitQueue;
    (SplitQueue::new(RING, 16), SplitQueue::new(RING + 0x1_0000, 16))
}

/// Guest code that checks the device at [`MMIO_BASE`] is `device_id`,
/// negotiates VIRTIO_F_VERSION_1, sets up `queues` (in order, from queue
/// 0) and sets DRIVER_OK, leaving %rbx at the registers; jumps to `fail`
/// when the device is not what it should be.
fn bring_up(device_id: u32, queues: &[&SplitQueue]) -> String {
    let mut asm = format!(
        "mov ${MMIO_BASE:#x}, %rbx\n cmpl ${device_id}, 8(%rbx)\n jne fail\n \
         movl $1, 0x70(%rbx)\n movl $3, 0x70(%rbx)\n \
         movl $1, 0x24(%rbx)\n movl $1, 0x20(%rbx)\n movl $0xb, 0x70(%rbx)\n"
    );
    for (i, q) in queues.iter().enumerate() {
        let (desc, avail, used) = q.addresses();
        asm += &format!(
            "movl ${i}, 0x30(%rbx)\n movl ${size}, 0x38(%rbx)\n movl ${desc:#x}, 0x80(%rbx)\n \
             movl ${avail:#x}, 0x90(%rbx)\n movl ${used:#x}, 0xa0(%rbx)\n movl $1, 0x44(%rbx)\n",
            size = q.size()
        );
    }
    asm + "movl $0xf, 0x70(%rbx)\n"
}

/// A guest program sets up virtio-vsock's receive and transmit queues over
/// MMIO and connects to a host unix socket through the in-process device
/// (the packets are laid in its memory by the test); the host program
/// receives the bytes the guest sent.
#[test]
fn a_program_connects_to_a_host_socket_through_in_process_vsock() {
    use std::io::Read;

    use ferry_vmm::virtio_mmio::MmioTransport;
    use ferry_vsock::packet::{Header, HEADER_LEN, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM};

    if kvm().is_none() {
        return;
    }
    let uds = std::env::temp_dir().join(format!("ferry-kvm-vsock-{}.sock", std::process::id()));
    let host = std::os::unix::net::UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let device = ferry_vsock::device::VsockDevice::new(3, &uds).unwrap();
    let transport = MmioTransport::new(Box::new(ferry_vmm::devices::VirtioVsock::new(device)));

    let (rx, tx) = rx_tx_queues();
    let (_, _, rx_used) = rx.addresses();
    let (_, _, tx_used) = tx.addresses();
    let source = format!(
        r#"
            {setup}
            cmpl $3, 0x100(%rbx)
            jne fail
            movl $0, 0x50(%rbx)
            movl $1, 0x50(%rbx)
        1:  movzwl {rx_used_idx:#x}, %eax
            cmp $1, %eax
            jb 1b
            mov ${PHASE_PORT:#x}, %dx
            out %al, (%dx)
            movl $1, 0x50(%rbx)
        2:  movzwl {tx_used_idx:#x}, %eax
            cmp $2, %eax
            jb 2b
        "#,
        setup = bring_up(19, &[&rx, &tx]),
        rx_used_idx = rx_used + 2,
        tx_used_idx = tx_used + 2,
    );
    let code = assemble("virtio-vsock", &finish(&source));
    let (mut machine, mut vcpu, _vm, _) = boot(&code);
    machine.add_device(MMIO_BASE, transport);
    let packet = |op: u16, data: &[u8]| {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1111,
            dst_port: 5000,
            len: data.len() as u32,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        };
        [h.to_bytes().to_vec(), data.to_vec()].concat()
    };
    let (mut rx, mut tx) = (rx, tx);
    let rx_buf = BUFS;
    rx.offer(&machine.mem, &[Buffer::writable(rx_buf, 4096)]).unwrap();
    let request = packet(OP_REQUEST, &[]);
    machine.mem.write_slice(&request, GuestAddress(BUFS + 0x2000)).unwrap();
    tx.offer(&machine.mem, &[Buffer::readable(BUFS + 0x2000, request.len() as u32)])
        .unwrap();
    let stop = machine
        .run(&mut vcpu, &mut |m, port, _| {
            assert_eq!(port, PHASE_PORT);
            let mut hdr = [0u8; HEADER_LEN];
            m.mem.read_slice(&mut hdr, GuestAddress(rx_buf)).unwrap();
            let h = Header::parse(&hdr).unwrap();
            assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 5000, 1111), "{h:?}");
            let data = packet(OP_RW, b"hello over vsock");
            m.mem.write_slice(&data, GuestAddress(BUFS + 0x4000)).unwrap();
            tx.offer(&m.mem, &[Buffer::readable(BUFS + 0x4000, data.len() as u32)])
                .unwrap();
            None
        })
        .unwrap();
    assert_eq!(stop, Stop::Exit(0), "the guest program failed its checks of the device");
    let (mut conn, _) = host.accept().unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 16];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello over vsock");
}

/// A guest program brings up virtio-net over MMIO and sends an ARP request
/// for the gateway; the NAT (the net crate's stack on its own thread, as
/// `ferry run` runs it, reached through its QEMU stream front end)
/// answers, and the reply lands in the guest's receive buffer.
#[test]
fn a_program_gets_the_nats_arp_reply_through_in_process_virtio_net() {
    use ferry_vmm::virtio_mmio::MmioTransport;

    if kvm().is_none() {
        return;
    }
    // The program reads exactly one frame and expects the ARP reply; with
    // IPv6 on, the router advertisement sent on attach would come first.
    let cfg = ferry_net::NetConfig {
        v6: None,
        ..ferry_net::NetConfig::default()
    };
    let (gateway, gateway_mac) = (cfg.gateway, cfg.gateway_mac);
    let sock = std::env::temp_dir().join(format!("ferry-vmm-net-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listen: ferry_net::frontend::listen::ListenAddr = format!("unix://{}", sock.display()).parse().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let stack = ferry_net::Stack::new(cfg, std::sync::Arc::new(ferry_net::NetMetrics::default()));
            tokio::task::spawn_local(ferry_net::run_timers(stack.clone()));
            let serve = ferry_net::frontend::listen::qemu_stream(stack, listen).await.unwrap();
            ready_tx.send(()).unwrap();
            serve.await;
        });
    });
    ready_rx.recv().unwrap();
    let link = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let guest_mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let transport = MmioTransport::new(Box::new(ferry_vmm::devices::VirtioNet::new(link, guest_mac).unwrap()));

    let (rx, tx) = rx_tx_queues();
    let (_, _, rx_used) = rx.addresses();
    let source = format!(
        r#"
            {setup}
            movl $0, 0x50(%rbx)
            movl $1, 0x50(%rbx)
        1:  movzwl {rx_used_idx:#x}, %eax
            cmp $1, %eax
            jb 1b
        "#,
        setup = bring_up(1, &[&rx, &tx]),
        rx_used_idx = rx_used + 2,
    );
    let code = assemble("virtio-net", &finish(&source));
    let (mut machine, mut vcpu, _vm, _) = boot(&code);
    machine.add_device(MMIO_BASE, transport);
    // virtio-net header (12 bytes) + who-has gateway, tell 10.0.2.2.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&guest_mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&guest_mac);
    frame.extend_from_slice(&[10, 0, 2, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&gateway.octets());
    let (mut rx, mut tx) = (rx, tx);
    rx.offer(&machine.mem, &[Buffer::writable(BUFS, 4096)]).unwrap();
    machine.mem.write_slice(&frame, GuestAddress(BUFS + 0x2000)).unwrap();
    tx.offer(&machine.mem, &[Buffer::readable(BUFS + 0x2000, frame.len() as u32)])
        .unwrap();
    // The reply comes back on the network's thread: the host side serves
    // it while the program waits.
    let stop = std::thread::scope(|scope| {
        let m = &machine;
        scope.spawn(move || m.serve_host(std::time::Duration::from_millis(20)));
        machine.run(&mut vcpu, &mut |_, port, _| {
            Some(Stop::Error(format!("port {port:#x}")))
        })
    })
    .unwrap();
    let _ = std::fs::remove_file(&sock);
    assert_eq!(stop, Stop::Exit(0), "the guest program failed its checks of the device");
    let mut reply = [0u8; 12 + 42];
    machine.mem.read_slice(&mut reply, GuestAddress(BUFS)).unwrap();
    let eth = &reply[12..];
    assert_eq!(&eth[0..6], &guest_mac, "to the guest");
    assert_eq!(&eth[6..12], &gateway_mac, "from the gateway");
    assert_eq!(&eth[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(&eth[20..22], &[0, 2], "a reply");
    assert_eq!(&eth[22..28], &gateway_mac);
    assert_eq!(&eth[28..32], &gateway.octets());
}

/// A stand-in kernel: checks the zero page a boot loader must fill (the
/// 64-bit boot protocol: %rsi points at it), prints the command line, the
/// initramfs and the first virtio-mmio device's magic (one 32-bit load, as
/// the spec requires) to the 8250, writes
/// the boot timer and exits. Whatever it finds wrong exits with status 1.
const FAKE_KERNEL: &str = r#"
    entry:
        mov %rsi, %rbx
        cmpw $0xaa55, 0x1fe(%rbx)
        jne fail
        cmpl $0x53726448, 0x202(%rbx)
        jne fail
        cmpb $0xff, 0x210(%rbx)
        jne fail
        cmpb $2, 0x1e8(%rbx)
        jne fail
        cmpq $0, 0x2d0(%rbx)
        jne fail
        cmpl $1, 0x2d0+16(%rbx)
        jne fail
        cmpq $0x100000, 0x2d0+20(%rbx)
        jne fail
        cmpl $1, 0x2d0+20+16(%rbx)
        jne fail
        mov 0x228(%rbx), %esi
        call puts
        mov $'|', %al
        call putc
        mov 0x218(%rbx), %esi
        mov 0x21c(%rbx), %ecx
        test %ecx, %ecx
        jz fail
    1:  lodsb
        call putc
        loop 1b
        mov $'|', %al
        call putc
        mov $0xd0000000, %esi
        mov (%rsi), %edx
        mov $4, %ecx
    2:  mov %dl, %al
        call putc
        shr $8, %edx
        loop 2b
        mov $'\n', %al
        call putc
        mov $123, %al
        out %al, $0x80
        mov $0x501, %dx
        mov $0, %al
        out %al, (%dx)
    fail:
        mov $0x501, %dx
        mov $1, %al
        out %al, (%dx)
    puts:
        lodsb
        test %al, %al
        jz 3f
        call putc
        jmp puts
    3:  ret
    putc:
        push %rdx
        push %rax
        mov $0x3fd, %dx
    4:  in (%dx), %al
        test $0x20, %al
        jz 4b
        pop %rax
        mov $0x3f8, %dx
        out %al, (%dx)
        pop %rdx
        ret
"#;

/// A bzImage around `code`: one setup sector with the boot protocol 2.15
/// header (loaded high, 64-bit entry), then the protected-mode part with
/// `code` at its 64-bit entry, 0x200 bytes in.
fn bzimage(code: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 1024 + 0x200];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    image.extend_from_slice(code);
    image
}

/// `source` linked as an ELF executable at 16 MiB, as vmlinux is.
fn vmlinux(name: &str, source: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("ferry-elf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, obj, elf) = (dir.join("k.S"), dir.join("k.o"), dir.join("vmlinux"));
    std::fs::write(&src, format!(".code64\n.text\n.globl entry\n{source}\n")).unwrap();
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    assert!(ok(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src)));
    assert!(ok(Command::new("ld")
        .args(["-N", "-e", "entry", "-Ttext=0x1000000", "-o"])
        .arg(&elf)
        .arg(&obj)));
    let image = std::fs::read(&elf).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    image
}

/// Boots `kernel` with ferry's Linux runner (what `ferry vmm` runs) and
/// one virtio device; returns the console and how it ended.
fn boot_kernel(name: &str, kernel: &[u8]) -> (String, ferry_vmm::linux::LinuxVmExit) {
    let dir = std::env::temp_dir().join(format!("ferry-kernel-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kernel"), kernel).unwrap();
    std::fs::write(dir.join("initrd"), b"initramfs bytes").unwrap();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let fs = ferry_fs::device::FsDevice::new(&share, &Default::default()).unwrap();
    let console = CapturedOutput::default();
    let cfg = ferry_vmm::linux::LinuxVmConfig {
        kernel: dir.join("kernel"),
        initrd: Some(dir.join("initrd")),
        cmdline: "console=ttyS0 ferry.cmd=true".into(),
        memory_mib: 128,
        devices: vec![Box::new(ferry_vmm::devices::VirtioFs::new(fs, "share", 1))],
        console: Box::new(console.clone()),
        confine: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ferry_vmm::linux::boot_linux(cfg));
    });
    let exit = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the stand-in kernel did not finish within 60 s")
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (String::from_utf8_lossy(&console.contents()).into_owned(), exit)
}

fn check_boot(console: &str, exit: &ferry_vmm::linux::LinuxVmExit) {
    assert_eq!(
        exit.stop,
        Stop::Exit(0),
        "the stand-in kernel rejected its zero page; console: {console:?}"
    );
    let (cmdline, rest) = console.split_once('|').unwrap();
    assert!(cmdline.starts_with("console=ttyS0 ferry.cmd=true pci=off"), "{cmdline}");
    assert!(cmdline.ends_with(" virtio_mmio.device=4K@0xd0000000:5"), "{cmdline}");
    assert_eq!(
        rest, "initramfs bytes|virt\n",
        "initramfs, then the device window's magic"
    );
    assert!(exit.boot_time.is_some(), "the boot timer was not recorded");
}

#[test]
fn a_bzimage_kernel_boots_with_the_64_bit_boot_protocol() {
    if kvm().is_none() {
        return;
    }
    let code = assemble("bzimage", FAKE_KERNEL);
    let (console, exit) = boot_kernel("bz", &bzimage(&code));
    check_boot(&console, &exit);
}

#[test]
fn a_vmlinux_elf_kernel_boots_at_its_entry() {
    if kvm().is_none() {
        return;
    }
    let (console, exit) = boot_kernel("elf", &vmlinux("elf", FAKE_KERNEL));
    check_boot(&console, &exit);
}
