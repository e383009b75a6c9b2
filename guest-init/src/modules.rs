//! Loads kernel modules shipped in the initramfs, dependencies first, using
//! the image's `modules.dep` (the format depmod writes).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys;

/// `modules.dep` parsed: module name → (path relative to the module dir, deps).
#[derive(Debug, Default)]
pub struct ModuleDeps {
    modules: HashMap<String, (String, Vec<String>)>,
}

/// `kernel/fs/fuse/virtiofs.ko` → `virtiofs`; `-` and `_` are the same to the
/// kernel, so names are normalised to `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDeps {
    pub fn parse(text: &str) -> ModuleDeps {
        let mut modules = HashMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(path), (path.to_string(), deps));
        }
        ModuleDeps { modules }
    }

    /// The load order for `wanted`: every dependency before its dependents,
    /// each module once. Unknown names are returned in the error list.
    pub fn load_order(&self, wanted: &[String]) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut unknown = Vec::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if !self.modules.contains_key(&name) {
                unknown.push(name);
                continue;
            }
            self.visit(&name, &mut seen, &mut order);
        }
        (order, unknown)
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some((_, deps)) = self.modules.get(name) {
            // depmod lists the deepest dependency last.
            for dep in deps.iter().rev() {
                self.visit(dep, seen, order);
            }
            order.push(name.to_string());
        }
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.modules.get(name).map(|(p, _)| p.as_str())
    }
}

/// The directory of the running kernel's modules.
pub fn module_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Path::new("/lib/modules").join(release.trim())
}

/// Loads `wanted` and their dependencies. Returns how many were loaded; each
/// failure is reported on the console but does not stop the boot, because a
/// workload that needs no network should still run without virtio_net.
pub fn load(wanted: &[String]) -> usize {
    let dir = module_dir();
    let deps = match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(text) => ModuleDeps::parse(&text),
        Err(e) => {
            if !wanted.is_empty() {
                eprintln!(
                    "ferry-init: cannot read {}/modules.dep: {e}; no modules loaded",
                    dir.display()
                );
            }
            return 0;
        }
    };
    let (order, unknown) = deps.load_order(wanted);
    for name in unknown {
        eprintln!(
            "ferry-init: module {name} is not in this image; rebuild it with `ferry guest build --module {name}`"
        );
    }
    let mut loaded = 0;
    for name in order {
        let Some(rel) = deps.path_of(&name) else { continue };
        let result = File::open(dir.join(rel)).and_then(|f| sys::finit_module(&f, ""));
        match result {
            Ok(()) => loaded += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => eprintln!("ferry-init: loading module {name}: {e}"),
        }
    }
    loaded
}

/// The modules listed in the image (one per line in /etc/ferry/modules).
pub fn image_list() -> Vec<String> {
    match std::fs::read_to_string("/etc/ferry/modules") {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            eprintln!("ferry-init: reading /etc/ferry/modules: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko\n\
                       kernel/fs/fuse/fuse.ko:\n\
                       kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko\n\
                       kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n\
                       kernel/net/vmw_vsock/vsock.ko:\n";

    #[test]
    fn dependencies_come_first_and_once() {
        let deps = ModuleDeps::parse(DEP);
        let (order, unknown) = deps.load_order(&[
            "virtiofs".into(),
            "vmw-vsock-virtio-transport".into(),
            "fuse".into(),
            "nope".into(),
        ]);
        assert_eq!(
            order,
            [
                "fuse",
                "virtiofs",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        assert_eq!(unknown, ["nope"]);
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(module_name("kernel/a/b/snd-hda.ko.xz"), "snd_hda");
    }
}
