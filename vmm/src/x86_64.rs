//! x86_64 direct boot: the GDT and identity-mapped page tables a vCPU
//! needs to start in 64-bit mode without firmware (Firecracker's layout:
//! tables in the first pages of guest memory).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

pub const CR0_PE: u64 = 1;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

pub const GDT_ADDR: u64 = 0x500;
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
/// Four page directories, 0xb000..0xf000.
const PD: u64 = 0xb000;

/// Null, 64-bit code, data: the flat segments of Linux's boot GDT.
const GDT: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];

/// Writes the GDT and page tables identity-mapping the first 4 GiB (RAM
/// and the device window above it) with 2 MiB pages; returns (cr3, gdt
/// base, gdt limit).
pub fn write_boot_tables<M: GuestMemory>(mem: &M) -> Result<(u64, u64, u16), vm_memory::GuestMemoryError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    // Present | writable.
    mem.write_obj(PDPT | 0x3, GuestAddress(PML4))?;
    for gib in 0..4u64 {
        let pd = PD + 0x1000 * gib;
        mem.write_obj(pd | 0x3, GuestAddress(PDPT + 8 * gib))?;
        for i in 0..512u64 {
            // Present | writable | 2 MiB page.
            mem.write_obj((gib << 30) | (i << 21) | 0x83, GuestAddress(pd + 8 * i))?;
        }
    }
    Ok((PML4, GDT_ADDR, (GDT.len() * 8 - 1) as u16))
}
