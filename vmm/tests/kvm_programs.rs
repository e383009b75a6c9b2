//! Small x86_64 programs, assembled at test time with the GNU assembler,
//! run under this machine's real KVM in 64-bit mode through ferry's
//! `Hypervisor` trait.

#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::Command;

use ferry_vmm::hypervisor::kvm::KvmHypervisor;
use ferry_vmm::hypervisor::{Hypervisor, LongModeEntry, Vcpu, VcpuExit, Vm};
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

/// Programs end by writing their status here (QEMU's isa-debug-exit
/// convention): with the in-kernel interrupt controller, `hlt` waits in
/// KVM for an interrupt instead of exiting to the VMM.
const EXIT_PORT: u16 = 0x501;

/// What a program did: serial output, port writes, how it ended.
#[derive(Debug, Default)]
struct Outcome {
    serial: String,
    ports: Vec<(u16, u8)>,
    exit: Option<u8>,
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

fn run_on_vcpu(name: &str, source: &str) -> Outcome {
    let code = assemble(name, source);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&code, GuestAddress(LOAD_ADDR)).unwrap();
    let (cr3, gdt_base, gdt_limit) = ferry_vmm::x86_64::write_boot_tables(&mem).unwrap();
    let kvm = KvmHypervisor::open().expect("/dev/kvm");
    let mut vm = kvm.create_vm().unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap();
    // SAFETY: `mem` outlives the VM (both live to the end of this function).
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
    let mut out = Outcome::default();
    for _ in 0..100_000 {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut { port: 0x3f8, data } => out.serial.push(char::from(data[0])),
            VcpuExit::IoOut { port: EXIT_PORT, data } => {
                out.exit = Some(data[0]);
                return out;
            }
            VcpuExit::IoOut { port, data } => out.ports.push((port, data[0])),
            VcpuExit::IoIn { data, .. } => data.fill(0),
            VcpuExit::Other(what) if what == "interrupted" => {}
            other => panic!("unexpected exit {other:?}; so far {out:?}"),
        }
    }
    panic!("the program did not exit: {out:?}");
}

#[test]
fn a_program_prints_to_the_serial_port_and_exits() {
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
            mov $0x501, %dx
            mov $7, %al
            out %al, (%dx)
        msg: .ascii "hello from 64-bit guest code\n"
        .set msg_len, . - msg
        "#,
    );
    assert_eq!(out.serial, "hello from 64-bit guest code\n");
    assert_eq!(out.ports, [(0x80, 123)]);
    assert_eq!(out.exit, Some(7));
}
