//! [`Translated`]: how the guest sees a share, as a `FileSystem` wrapper:
//! owners translated by [`IdMap`]s (see [`crate::idmap`]), and directories
//! that are mount points on the host announced as submounts (virtiofsd's
//! `--announce-submounts`, so the guest gives each its own mount and device
//! number). Everything else is passed through unchanged.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};

use crate::idmap::IdMap;
use crate::xattrmap::{ClientName, XattrMap};

/// A `FileSystem` whose owners are translated by `uids` and `gids`.
pub struct Translated<F> {
    pub inner: F,
    pub uids: IdMap,
    pub gids: IdMap,
    /// Flag directories on another host file system than their parent.
    pub announce_submounts: bool,
    /// `--xattrmap`: xattr names renamed, passed or hidden.
    pub xattrmap: Option<XattrMap>,
    /// `--preserve-noatime`: keep the guest's O_NOATIME (virtiofsd drops it
    /// by default: the host refuses it with EPERM on files the daemon's
    /// user does not own, e.g. under uid translation or without root).
    pub preserve_noatime: bool,
}

/// FUSE_ATTR_SUBMOUNT in `fuse_attr.flags`.
const ATTR_SUBMOUNT: u32 = 1;

/// XATTR_SIZE_MAX and XATTR_LIST_MAX (both 64 KiB on Linux).
const XATTR_MAX: u32 = 65536;

impl<F> Translated<F> {
    fn eperm() -> io::Error {
        io::Error::from_raw_os_error(libc::EPERM)
    }

    /// The request's caller as the host sees it (files are created as it).
    fn host_ctx(&self, ctx: &Context) -> io::Result<Context> {
        let mut c = *ctx;
        c.uid = self.uids.to_host(ctx.uid).ok_or_else(Self::eperm)?;
        c.gid = self.gids.to_host(ctx.gid).ok_or_else(Self::eperm)?;
        Ok(c)
    }

    fn open_flags(&self, flags: u32) -> u32 {
        if self.preserve_noatime {
            flags
        } else {
            flags & !(libc::O_NOATIME as u32)
        }
    }

    fn guest_stat(&self, mut st: stat64) -> stat64 {
        st.st_uid = self.uids.to_guest(st.st_uid);
        st.st_gid = self.gids.to_guest(st.st_gid);
        st
    }

    fn guest_entry(&self, mut e: Entry) -> Entry {
        e.attr = self.guest_stat(e.attr);
        e
    }
}

impl<F: FileSystem> Translated<F> {
    /// A looked-up entry as the guest gets it: owners translated, and a
    /// directory on another device than `parent` flagged as a submount.
    fn guest_lookup(&self, ctx: &Context, parent: u64, parent_dev: &mut Option<u64>, e: Entry) -> Entry {
        let mut e = self.guest_entry(e);
        if self.announce_submounts && e.attr.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // The parent's device is looked up once per call (a READDIRPLUS
            // batch may hold many directories), and only if a directory
            // needs it.
            if parent_dev.is_none() {
                *parent_dev = self
                    .inner
                    .getattr(ctx, F::Inode::from(parent), None)
                    .ok()
                    .map(|(p, _)| p.st_dev);
            }
            if parent_dev.is_some_and(|dev| dev != e.attr.st_dev) {
                e.attr_flags |= ATTR_SUBMOUNT;
            }
        }
        e
    }
}

impl<F: FileSystem> Translated<F> {
    /// The host's name for an xattr name from the guest.
    fn host_xattr(&self, name: &CStr) -> io::Result<std::borrow::Cow<'_, CStr>> {
        let Some(map) = &self.xattrmap else {
            // Borrowed from the request; the Cow only outlives it in type.
            return Ok(std::borrow::Cow::Owned(name.to_owned()));
        };
        match map.client(name.to_bytes()) {
            ClientName::Host(n) => std::ffi::CString::new(n)
                .map(std::borrow::Cow::Owned)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)),
            ClientName::Denied => Err(io::Error::from_raw_os_error(libc::EPERM)),
            ClientName::Unsupported => Err(io::Error::from_raw_os_error(libc::ENOTSUP)),
        }
    }

    /// When `security.capability` is stored under another name, the host
    /// kernel no longer drops it when a file is written or changes owner:
    /// do it here, as virtiofsd does.
    fn kill_mapped_capability(&self, ctx: &Context, inode: F::Inode) {
        let Some(map) = &self.xattrmap else { return };
        if let ClientName::Host(n) = map.client(b"security.capability") {
            if n != b"security.capability" {
                if let Ok(name) = std::ffi::CString::new(n) {
                    let _ = self.inner.removexattr(ctx, inode, &name);
                }
            }
        }
    }
}

impl<F: FileSystem> FileSystem for Translated<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut want = self.inner.init(capable)?;
        if self.announce_submounts {
            want |= FsOptions::SUBMOUNTS;
        }
        Ok(want)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let parent: u64 = parent.into();
        self.inner
            .lookup(ctx, F::Inode::from(parent), name)
            .map(|e| self.guest_lookup(ctx, parent, &mut None, e))
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner
            .getattr(ctx, inode, handle)
            .map(|(st, d)| (self.guest_stat(st), d))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let mut attr = attr;
        if valid.contains(SetattrValid::UID) {
            attr.st_uid = self.uids.to_host(attr.st_uid).ok_or_else(Self::eperm)?;
        }
        if valid.contains(SetattrValid::GID) {
            attr.st_gid = self.gids.to_host(attr.st_gid).ok_or_else(Self::eperm)?;
        }
        let raw: u64 = inode.into();
        let r = self.inner.setattr(ctx, raw.into(), attr, handle, valid)?;
        if valid.intersects(SetattrValid::UID | SetattrValid::GID | SetattrValid::SIZE) {
            self.kill_mapped_capability(ctx, raw.into());
        }
        Ok((self.guest_stat(r.0), r.1))
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.inner
            .symlink(&self.host_ctx(ctx)?, linkname, parent, name)
            .map(|e| self.guest_entry(e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.inner
            .mknod(&self.host_ctx(ctx)?, inode, name, mode, rdev, umask)
            .map(|e| self.guest_entry(e))
    }

    fn mkdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        self.inner
            .mkdir(&self.host_ctx(ctx)?, parent, name, mode, umask)
            .map(|e| self.guest_entry(e))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: Self::Inode, newparent: Self::Inode, newname: &CStr) -> io::Result<Entry> {
        self.inner
            .link(ctx, inode, newparent, newname)
            .map(|e| self.guest_entry(e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.inner.open(ctx, inode, self.open_flags(flags), fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let args = CreateIn {
            flags: self.open_flags(args.flags),
            ..args
        };
        self.inner
            .create(&self.host_ctx(ctx)?, parent, name, args)
            .map(|(e, h, o, p)| (self.guest_entry(e), h, o, p))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        // fuse-backend-rs re-applies a request's file flags to the open
        // descriptor (F_SETFL), which would bring O_NOATIME back.
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, self.open_flags(flags))
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let raw: u64 = inode.into();
        if fuse_flags & fuse_backend_rs::abi::fuse_abi::WRITE_KILL_PRIV != 0 {
            self.kill_mapped_capability(ctx, raw.into());
        }
        self.inner.write(
            ctx,
            raw.into(),
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            self.open_flags(flags),
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: Self::Inode, handle: Self::Handle, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.inner.fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.inner.setxattr(ctx, inode, &self.host_xattr(name)?, value, flags)
    }

    fn getxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        // fuse-backend-rs allocates the guest's `size` up front; no value
        // is longer than XATTR_SIZE_MAX, so asking for more only lets a
        // guest make the daemon allocate 4 GiB (found by the fuse fuzz
        // target).
        self.inner
            .getxattr(ctx, inode, &self.host_xattr(name)?, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        // As getxattr: no list is longer than XATTR_LIST_MAX.
        let size = size.min(XATTR_MAX);
        let Some(map) = &self.xattrmap else {
            return self.inner.listxattr(ctx, inode, size);
        };
        // The guest's list differs in length from the host's: fetch it
        // whole, map it, then answer the size query or the list.
        let raw: u64 = inode.into();
        let host = match self.inner.listxattr(ctx, raw.into(), 0)? {
            ListxattrReply::Count(0) => Vec::new(),
            ListxattrReply::Count(n) => match self.inner.listxattr(ctx, raw.into(), n)? {
                ListxattrReply::Names(v) => v,
                ListxattrReply::Count(_) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            },
            ListxattrReply::Names(v) => v,
        };
        let guest = map.server_list(&host);
        if size == 0 {
            Ok(ListxattrReply::Count(guest.len() as u32))
        } else if guest.len() > size as usize {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(guest))
        }
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, inode, &self.host_xattr(name)?)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir: u64 = inode.into();
        let mut dir_dev = None;
        let mut add = |d: DirEntry, e: Entry| add_entry(d, self.guest_lookup(ctx, dir, &mut dir_dev, e));
        self.inner
            .readdirplus(ctx, F::Inode::from(dir), handle, size, offset, &mut add)
    }

    fn fsyncdir(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: Self::Inode, flags: u32, handle: Self::Handle) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    /// Query file lock status
    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    /// Grab a file read lock
    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    /// Grab a file write lock
    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    /// send ioctl to the file
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    /// Query a file's block mapping info
    fn bmap(&self, ctx: &Context, inode: Self::Inode, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    /// Poll a file's events
    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    /// Send notify reply.
    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }
}
