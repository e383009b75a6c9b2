//! The virtio-fs request loop: FUSE requests from a virtqueue answered by
//! fuse-backend-rs's passthrough file system. Transport-independent: the
//! caller owns the queue and the guest memory (vhost-user here, virtio-mmio
//! in the built-in VMM).

use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::InHeader;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::inject::Replay;
use crate::options::{CacheMode, FsOptions, InodeFileHandles, Negotiation};
use crate::translate::Translated;

/// System calls of the passthrough file system answering FUSE requests
/// (fuse-backend-rs's `PassthroughFs`), for the seccomp allow-list.
pub const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_copy_file_range,
    libc::SYS_lseek,
    libc::SYS_getdents64,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_flock,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_umask,
    // xattrs, through /proc/self/fd paths and on descriptors
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    libc::SYS_lgetxattr,
    libc::SYS_lsetxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    // creating files as the guest's caller (per-thread credentials), and
    // clearing setuid bits on write (killpriv)
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_capget,
    libc::SYS_capset,
];

/// Whether inodes under `dir` can be held as file handles rather than open
/// descriptors: a handle is made for `dir` and opened again, which needs a
/// file system that exports handles and CAP_DAC_READ_SEARCH. The error
/// says which of the two is missing.
pub fn file_handles_work(dir: &std::path::Path) -> io::Result<()> {
    const MAX_HANDLE_SZ: usize = 128;
    #[repr(C)]
    struct FileHandle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; MAX_HANDLE_SZ],
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut fh = FileHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: name_to_handle_at(2) with a valid path, a handle buffer whose
    // handle_bytes says how much room follows, and a valid out-pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut fh as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "{} cannot give file handles: {e} (its file system does not export them)",
                dir.display()
            ),
        ));
    }
    let mount = std::fs::File::open(dir)?;
    // SAFETY: open_by_handle_at(2) with an open descriptor on the same
    // mount and the handle the kernel just filled in.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            std::os::fd::AsRawFd::as_raw_fd(&mount),
            &mut fh as *mut FileHandle,
            libc::O_PATH,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "opening a file handle under {}: {e} (needs CAP_DAC_READ_SEARCH: run as root)",
                dir.display()
            ),
        ));
    }
    // SAFETY: a descriptor open_by_handle_at(2) just returned to us.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
    Ok(())
}

/// One share's file system and FUSE server.
pub struct FsDevice {
    server: Server<Translated<Arc<PassthroughFs>>>,
    fs: Arc<PassthroughFs>,
    /// inotify passthrough for this share, when the host watches it.
    replay: Option<Arc<Replay>>,
    /// INIT reply flags this share must not grant although the passthrough
    /// file system offers them (READDIRPLUS under `--no-readdirplus`).
    withheld_init_flags: u32,
    /// INIT `flags2` bits this share grants when the guest offers them,
    /// which fuse-backend-rs does not know (DIRECT_IO_ALLOW_MMAP for
    /// `--allow-mmap`).
    granted_init_flags2: u32,
    /// INIT `flags2` bits a guest must offer or be refused (`--security-label=always`).
    required_init_flags2: u32,
    /// `--security-label`: label new files with the guest's context.
    security_label: bool,
    /// `--tag`: advertised in the device's configuration space.
    tag: Option<String>,
}

/// FUSE_INIT's opcode, and where `fuse_init_out.flags` sits in its reply:
/// after the 16-byte out header and `major`, `minor`, `max_readahead`.
const OP_INIT: u32 = 26;
const INIT_OUT_FLAGS: u64 = 16 + 12;
/// `fuse_init_out.flags2`: after flags, max_background, congestion_threshold,
/// max_write, time_gran, max_pages and map_alignment.
const INIT_OUT_FLAGS2: u64 = 16 + 32;
/// FUSE_INIT_EXT: `flags2` is meaningful (in `flags`).
const INIT_EXT: u32 = 1 << 30;
/// FUSE_DIRECT_IO_ALLOW_MMAP (bit 36, i.e. bit 4 of `flags2`; Linux 6.6+):
/// files opened for direct I/O may still be mapped shared.
pub const DIRECT_IO_ALLOW_MMAP2: u32 = 1 << 4;
/// FUSE_SECURITY_CTX (bit 32: bit 0 of `flags2`): creating requests carry
/// the new file's security context.
pub const SECURITY_CTX2: u32 = 1;
/// Requests that create a file: MKNOD, MKDIR, SYMLINK, CREATE.
const CREATING: [u32; 4] = [8, 9, 6, 35];
/// FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO.
const READDIRPLUS_FLAGS: u32 = (1 << 13) | (1 << 14);

/// Narrows or widens an INIT reply already written to the chain's
/// device-writable buffers (fuse-backend-rs's `Server` takes the file
/// system's answer as it is; this is the one place to adjust it): `clear`
/// from `flags`, `set2` into `flags2` (with FUSE_INIT_EXT in `flags`).
fn patch_init_reply<M>(mem: &GuestMemoryMmap, chain: &DescriptorChain<M>, clear: u32, set2: u32)
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let set = if set2 != 0 { INIT_EXT } else { 0 };
    patch_word(mem, chain, INIT_OUT_FLAGS, |f| (f & !clear) | set);
    if set2 != 0 {
        patch_word(mem, chain, INIT_OUT_FLAGS2, |f| f | set2);
    }
}

/// Where the u32 at `offset` of the chain's writable buffers (a reply)
/// sits in guest memory. The word never straddles buffers in practice
/// (Linux sends one buffer for the whole reply); if it did, None.
fn reply_word_at<M>(chain: &DescriptorChain<M>, offset: u64) -> Option<vm_memory::GuestAddress>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut skip = offset;
    for desc in chain.clone().writable() {
        let len = u64::from(desc.len());
        if skip + 4 <= len {
            return Some(vm_memory::GuestAddress(desc.addr().0 + skip));
        }
        if skip < len {
            return None;
        }
        skip -= len;
    }
    None
}

/// Rewrites the u32 at `offset` of the chain's writable buffers.
fn patch_word<M>(mem: &GuestMemoryMmap, chain: &DescriptorChain<M>, offset: u64, f: impl Fn(u32) -> u32)
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    use vm_memory::Bytes;
    if let Some(at) = reply_word_at(chain, offset) {
        if let Ok(word) = mem.read_obj::<u32>(at) {
            let _ = mem.write_obj(f(word), at);
        }
    }
}

/// The security context of a creating request (FUSE_SECURITY_CTX), from
/// the last `total_extlen * 8` bytes of the request.
fn creation_label<M>(mem: &GuestMemoryMmap, chain: &DescriptorChain<M>) -> Option<(std::ffi::CString, Vec<u8>)>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut r = Reader::from_descriptor_chain(mem, chain.clone()).ok()?;
    let h = r.read_obj::<InHeader>().ok()?;
    // `padding` is `total_extlen` (low half) in FUSE 7.36's header.
    let ext_len = (h.padding & 0xffff) as usize * 8;
    if !CREATING.contains(&h.opcode) || ext_len == 0 {
        return None;
    }
    let body_len = (h.len as usize).checked_sub(std::mem::size_of::<InHeader>())?;
    if ext_len > body_len || body_len > 1 << 20 {
        return None;
    }
    let mut body = vec![0u8; body_len];
    std::io::Read::read_exact(&mut r, &mut body).ok()?;
    let (name, value) = crate::secctx::security_context(&body[body_len - ext_len..])?;
    Some((std::ffi::CString::new(name).ok()?, value))
}

/// Reads the u32 at `offset` of the chain's writable buffers.
fn read_word<M>(mem: &GuestMemoryMmap, chain: &DescriptorChain<M>, offset: u64) -> Option<u32>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    use vm_memory::Bytes;
    mem.read_obj::<u32>(reply_word_at(chain, offset)?).ok()
}

/// The `flags2` a FUSE INIT request offers (0 without FUSE_INIT_EXT).
fn offered_init_flags2(r: &mut Reader<'_, ()>) -> u32 {
    let Ok(init) = r.read_obj::<[u32; 4]>() else { return 0 };
    if init[3] & INIT_EXT == 0 {
        return 0;
    }
    r.read_obj::<u32>().unwrap_or(0)
}

impl FsDevice {
    /// Sets the guest's security context on the file a creating request
    /// made, once its reply (an entry: out header, then the node id) says
    /// it succeeded. The label follows the creation rather than going with
    /// it (virtiofsd uses setfscreatecon where SELinux runs on the host);
    /// a failure is logged and the file stays unlabelled.
    fn apply_label<M>(&self, mem: &GuestMemoryMmap, chain: &DescriptorChain<M>, name: &std::ffi::CStr, value: &[u8])
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        let error = read_word(mem, chain, 4);
        let node = read_word(mem, chain, 16).zip(read_word(mem, chain, 20));
        let (Some(0), Some((lo, hi))) = (error, node) else {
            return;
        };
        let nodeid = u64::from(lo) | (u64::from(hi) << 32);
        use fuse_backend_rs::api::filesystem::FileSystem;
        let ctx = fuse_backend_rs::api::filesystem::Context::new();
        if let Err(e) = self.fs.setxattr(&ctx, nodeid, name, value, 0) {
            tracing::warn!(label = ?name, error = %e, "--security-label: could not label a new file");
        }
    }

    /// Serves `root`: the shared directory as this process will see it when
    /// the guest's INIT arrives (after any sandboxing).
    pub fn new(root: &std::path::Path, opts: &FsOptions) -> io::Result<FsDevice> {
        let (attr, entry) = match opts.cache {
            CacheMode::Never => (Duration::ZERO, Duration::ZERO),
            CacheMode::Auto => (Duration::from_secs(1), Duration::from_secs(1)),
            CacheMode::Always | CacheMode::Metadata => (Duration::from_secs(86400), Duration::from_secs(86400)),
        };
        let cfg = Config {
            root_dir: root
                .to_str()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shared directory is not UTF-8"))?
                .to_string(),
            cache_policy: match opts.cache {
                CacheMode::Never => CachePolicy::Never,
                CacheMode::Auto => CachePolicy::Auto,
                CacheMode::Always => CachePolicy::Always,
                CacheMode::Metadata => CachePolicy::Metadata,
            },
            attr_timeout: attr,
            entry_timeout: entry,
            writeback: opts.writeback,
            xattr: opts.xattr || opts.posix_acl,
            do_import: true,
            inode_file_handles: opts.inode_file_handles != InodeFileHandles::Never,
            allow_direct_io: opts.allow_direct_io,
            killpriv_v2: opts.killpriv_v2,
            ..Config::default()
        };
        // The root is opened by the guest's FUSE INIT (`do_import`), after
        // the caller has confined the process.
        let fs = Arc::new(PassthroughFs::<()>::new(cfg)?);
        Ok(FsDevice {
            server: Server::new(Translated {
                inner: fs.clone(),
                uids: opts.uids.clone(),
                gids: opts.gids.clone(),
                announce_submounts: opts.announce_submounts,
                xattrmap: opts.xattrmap.clone(),
                preserve_noatime: opts.preserve_noatime,
            }),
            fs,
            replay: None,
            withheld_init_flags: if opts.readdirplus { 0 } else { READDIRPLUS_FLAGS },
            granted_init_flags2: if opts.allow_mmap { DIRECT_IO_ALLOW_MMAP2 } else { 0 }
                | if opts.security_label != Negotiation::Never {
                    SECURITY_CTX2
                } else {
                    0
                },
            required_init_flags2: if opts.security_label == Negotiation::Always {
                SECURITY_CTX2
            } else {
                0
            },
            security_label: opts.security_label != Negotiation::Never,
            tag: opts.tag.clone(),
        })
    }

    /// The virtio-fs configuration space (`struct virtio_fs_config`): the
    /// tag, NUL-padded to 36 bytes, then the number of request queues
    /// (little-endian). None without `--tag`: the front end's own tag is
    /// what the guest sees then.
    pub fn config_space(&self, request_queues: u32) -> Option<Vec<u8>> {
        let tag = self.tag.as_ref()?;
        let mut config = vec![0u8; 36];
        let n = tag.len().min(36);
        config[..n].copy_from_slice(&tag.as_bytes()[..n]);
        config.extend_from_slice(&request_queues.to_le_bytes());
        Some(config)
    }

    /// Answers the guest agent's replays of host changes (see [`crate::inject`]).
    pub fn with_replay(mut self, replay: Arc<Replay>) -> FsDevice {
        self.replay = Some(replay);
        self
    }

    /// Answers every request waiting in `queue`. Returns whether any buffer
    /// was used (the caller then decides about an interrupt). A malformed
    /// chain or request gets an empty reply; it never stops the loop.
    pub fn process_queue(&self, queue: &mut Queue, mem: &GuestMemoryMmap) -> io::Result<bool> {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.handle_chain(mem, chain);
            queue
                .add_used(mem, head, len)
                .map_err(|e| io::Error::other(format!("returning a buffer to the guest: {e}")))?;
            used = true;
        }
        Ok(used)
    }

    /// Answers one request; returns the reply's length (0 for a malformed
    /// chain or a request that failed without a reply). The caller returns
    /// the chain to the guest, on whatever thread it runs.
    pub fn handle_chain<M>(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<M>) -> u32
    where
        M: Deref<Target = GuestMemoryMmap> + Clone,
    {
        if let Some(replay) = &self.replay {
            if let Some(len) = crate::inject::intercept(replay, &self.fs, mem, &chain) {
                return len;
            }
        }
        let reader = Reader::from_descriptor_chain(mem, chain.clone());
        // An INIT whose reply this share adjusts: what to grant in flags2.
        let patch = (self.withheld_init_flags != 0 || self.granted_init_flags2 != 0)
            .then(|| {
                let mut r = Reader::from_descriptor_chain(mem, chain.clone()).ok()?;
                let h = r.read_obj::<InHeader>().ok()?;
                (h.opcode == OP_INIT).then(|| (chain.clone(), offered_init_flags2(&mut r)))
            })
            .flatten();
        // A creating request's security context, applied once it succeeded.
        let label = if self.security_label {
            creation_label(mem, &chain)
        } else {
            None
        };
        let label = label.map(|l| (chain.clone(), l));
        let writer = VirtioFsWriter::new(mem, chain);
        match (reader, writer) {
            (Ok(r), Ok(w)) => match self.server.handle_message(r, w.into(), None, None) {
                Ok(n) => {
                    if let Some((chain, offered2)) = patch {
                        let missing = self.required_init_flags2 & !offered2;
                        if missing != 0 {
                            // As virtiofsd: a guest without what "always" requires
                            // is refused at INIT (its mount fails).
                            tracing::error!(flags2 = missing, "the guest does not support a feature required by --security-label=always; refusing INIT");
                            patch_word(mem, &chain, 4, |_| (-libc::EPROTO) as u32);
                            patch_word(mem, &chain, 0, |_| 16);
                            return 16;
                        }
                        patch_init_reply(
                            mem,
                            &chain,
                            self.withheld_init_flags,
                            offered2 & self.granted_init_flags2,
                        );
                    }
                    if let Some((chain, (name, value))) = label {
                        self.apply_label(mem, &chain, &name, &value);
                    }
                    u32::try_from(n).unwrap_or(0)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "FUSE request failed");
                    0
                }
            },
            _ => {
                tracing::debug!("malformed virtio-fs descriptor chain");
                0
            }
        }
    }
}
