//! The virtio-fs request loop: FUSE requests from a virtqueue answered by
//! fuse-backend-rs's passthrough file system. Transport-independent: the
//! caller owns the queue and the guest memory (vhost-user here, virtio-mmio
//! in the built-in VMM).

use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::inject::Replay;
use crate::options::{CacheMode, FsOptions, InodeFileHandles};

/// One share's file system and FUSE server.
pub struct FsDevice {
    server: Server<Arc<PassthroughFs>>,
    fs: Arc<PassthroughFs>,
    /// inotify passthrough for this share, when the host watches it.
    replay: Option<Arc<Replay>>,
}

impl FsDevice {
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
            ..Config::default()
        };
        // The root is opened by the guest's FUSE INIT (`do_import`), after
        // the caller has confined the process.
        let fs = Arc::new(PassthroughFs::<()>::new(cfg)?);
        Ok(FsDevice {
            server: Server::new(fs.clone()),
            fs,
            replay: None,
        })
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
        let writer = VirtioFsWriter::new(mem, chain);
        match (reader, writer) {
            (Ok(r), Ok(w)) => match self.server.handle_message(r, w.into(), None, None) {
                Ok(n) => u32::try_from(n).unwrap_or(0),
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
