//! `ferry version`.

pub fn print() {
    println!("ferry {}", env!("CARGO_PKG_VERSION"));
    println!("target: {}-{}", std::env::consts::ARCH, std::env::consts::OS);
    println!(
        "kvm device: {}",
        if ferry_vmm::accel::kvm_device_usable() {
            "usable"
        } else {
            "not usable"
        }
    );
}
