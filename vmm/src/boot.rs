//! Linux's x86_64 64-bit boot protocol without firmware, as Firecracker
//! boots: the kernel (vmlinux ELF or bzImage) and initramfs in guest
//! memory, a zero page (`boot_params`) with the e820 map, the command
//! line, and the registers to enter the kernel in long mode.
//! Documentation/arch/x86/boot.rst is the contract; the loaders and the
//! `boot_params` layout are rust-vmm's linux-loader.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::hypervisor::LongModeEntry;

/// Where the zero page goes (Firecracker's layout).
pub const ZERO_PAGE: u64 = 0x7000;
/// The boot stack's top.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Where the command line goes, and its largest size with the NUL.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 0x1_0000;
/// The first byte of "high" memory, where kernels load.
pub const HIMEM_START: u64 = 0x10_0000;
/// End of conventional memory below the EBDA.
const EBDA_START: u64 = 0x9_fc00;
/// virtio-mmio windows and other devices live from here to 4 GiB, so RAM
/// stops below it.
pub const MMIO_GAP_START: u64 = 0xd000_0000;

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader: the kernel asks nothing more of it.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// The 64-bit entry point's offset into a bzImage's protected-mode part.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// loadflags: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1;
/// xloadflags: the kernel has the 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening the kernel {path}: {source}")]
    OpenKernel { path: String, source: std::io::Error },
    #[error("loading the kernel {path}: {reason} (expected a vmlinux ELF or a bzImage)")]
    Kernel { path: String, reason: String },
    #[error("the bzImage {0} has no 64-bit entry point (XLF_KERNEL_64); ferry boots x86_64 kernels only")]
    Not64Bit(String),
    #[error("reading the initramfs {path}: {source}")]
    Initrd { path: String, source: std::io::Error },
    #[error("the initramfs ({size} bytes) does not fit in guest memory above the kernel; give the VM more memory")]
    InitrdTooBig { size: u64 },
    #[error("the kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What to boot.
pub struct LinuxBoot<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
}

/// Where things ended up, for the vCPU and for logs.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    pub entry: LongModeEntry,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
}

/// Loads `boot` into `mem` and writes the zero page, command line, GDT and
/// page tables; returns how to enter the kernel.
pub fn load_linux(mem: &GuestMemoryMmap, boot: &LinuxBoot<'_>) -> Result<Loaded, BootError> {
    let path = boot.kernel.display().to_string();
    let open = || {
        File::open(boot.kernel).map_err(|source| BootError::OpenKernel {
            path: path.clone(),
            source,
        })
    };
    let kernel_err = |e: loader::Error| BootError::Kernel {
        path: path.clone(),
        reason: e.to_string(),
    };
    // A vmlinux is entered at its ELF entry; a bzImage 0x200 bytes into
    // its protected-mode part, with its setup header passed on.
    let elf = loader::Elf::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START)));
    let (result, rip) = match elf {
        Ok(r) => {
            let rip = r.kernel_load.raw_value();
            (r, rip)
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            let r =
                loader::BzImage::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START))).map_err(kernel_err)?;
            let hdr = r.setup_header.unwrap_or_default();
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::Not64Bit(path));
            }
            let rip = r.kernel_load.raw_value() + BZIMAGE_ENTRY_64;
            (r, rip)
        }
        Err(e) => return Err(kernel_err(e)),
    };

    let mut params = boot_params::default();
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = 0x100_0000;
    }

    let cmdline = boot.cmdline.as_bytes();
    if cmdline.contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let max = if params.hdr.cmdline_size != 0 {
        (params.hdr.cmdline_size as usize + 1).min(CMDLINE_MAX)
    } else {
        CMDLINE_MAX
    };
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    mem.write_slice(cmdline, GuestAddress(CMDLINE_ADDR))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64))?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;

    let ram_end = mem.last_addr().raw_value() + 1;
    let initrd = match boot.initrd {
        Some(p) => {
            let data = std::fs::read(p).map_err(|source| BootError::Initrd {
                path: p.display().to_string(),
                source,
            })?;
            // As high as the kernel allows, page aligned, above the kernel.
            let size = data.len() as u64;
            let limit = match params.hdr.initrd_addr_max {
                0 => ram_end,
                m => ram_end.min(u64::from(m) + 1),
            };
            let addr = limit.checked_sub(size).map(|a| a & !0xfff);
            let addr = match addr {
                Some(a) if a >= result.kernel_end => a,
                _ => return Err(BootError::InitrdTooBig { size }),
            };
            mem.write_slice(&data, GuestAddress(addr))?;
            params.hdr.ramdisk_image = addr as u32;
            params.hdr.ramdisk_size = size as u32;
            Some((addr, size))
        }
        None => None,
    };

    // Low memory below the EBDA, then RAM from 1 MiB (the runner keeps
    // RAM below the MMIO gap).
    let entries = [(0, EBDA_START), (HIMEM_START, ram_end.saturating_sub(HIMEM_START))];
    for (i, (addr, size)) in entries.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
        };
    }
    params.e820_entries = entries.len() as u8;
    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE))?;

    let (cr3, gdt_base, gdt_limit) = crate::x86_64::write_boot_tables(mem)?;
    Ok(Loaded {
        entry: LongModeEntry {
            rip,
            rsp: BOOT_STACK,
            rsi: ZERO_PAGE,
            cr3,
            gdt_base,
            gdt_limit,
        },
        kernel_end: result.kernel_end,
        initrd,
    })
}

/// `boot_params` as plain bytes for guest memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: boot_params is a packed C struct of integers and arrays of
// integers, valid for any bit pattern, with no padding of its own.
unsafe impl ByteValued for ZeroPage {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_kernel_is_refused_with_its_name() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!("ferry-not-a-kernel-{}", std::process::id()));
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = load_linux(
            &mem,
            &LinuxBoot {
                kernel: &path,
                initrd: None,
                cmdline: "",
            },
        )
        .unwrap_err()
        .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("vmlinux ELF or a bzImage"), "{err}");
    }
}
