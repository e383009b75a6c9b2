//! A FUSE client speaking to a vhost-user-fs back end (ferry fs,
//! virtiofsd) the way a guest's virtiofs driver does: each request is one
//! chain, the request readable, the reply buffer writable, on the first
//! request queue. Errors come back as `io::Error`s carrying the errno the
//! back end answered, so tests can match `raw_os_error()`.

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::time::Duration;

pub use fuse_backend_rs::abi::fuse_abi::{Attr, EntryOut, InitOut, Kstatfs, Opcode, SetattrIn};
use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, Direntplus, FsyncIn, GetattrIn, GetxattrIn, InHeader, InitIn, LinkIn, MkdirIn, OpenIn, OpenOut,
    OutHeader, ReadIn, ReleaseIn, RenameIn, SetxattrIn, StatfsOut, WriteIn, WriteOut,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::split_queue::Buffer;
use crate::vhost_user::VhostUserDevice;

/// The root directory's node id.
pub const ROOT: u64 = 1;
const HIPRIO_QUEUE: usize = 0;
const REQUEST_QUEUE: usize = 1;
/// Largest request (a 1 MiB WRITE plus headers) and largest reply.
const BUF_CAP: u32 = 2 << 20;
const TIMEOUT: Duration = Duration::from_secs(20);

// setattr valid bits (fuse_setattr_in.valid).
pub const FATTR_MODE: u32 = 0x1;
pub const FATTR_UID: u32 = 0x2;
pub const FATTR_GID: u32 = 0x4;
pub const FATTR_SIZE: u32 = 0x8;

/// A FUSE request header as bytes, with any `len` (for malformed
/// requests; [`FuseClient::call`] builds correct ones itself).
pub fn header(len: u32, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    InHeader {
        len,
        opcode,
        unique,
        nodeid,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

/// One entry of a READDIRPLUS reply.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub entry: EntryOut,
    pub offset: u64,
}

/// A FUSE session over one vhost-user-fs connection.
pub struct FuseClient {
    dev: VhostUserDevice,
    unique: u64,
    req_addr: u64,
    reply_addr: u64,
    /// The requesting process id put in each header (virtio-fs passes the
    /// guest's pid; back ends may look at it).
    pub pid: u32,
    /// The caller's ids put in each header (the guest process's).
    pub uid: u32,
    pub gid: u32,
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn decode<T: ByteValued>(body: &[u8]) -> io::Result<T> {
    T::from_slice(body.get(..std::mem::size_of::<T>()).unwrap_or(&[]))
        .copied()
        .ok_or_else(|| io::Error::other(format!("short reply: {} bytes", body.len())))
}

impl FuseClient {
    /// Connects to the back end at `socket` and sends FUSE INIT.
    pub fn connect(socket: &Path) -> io::Result<(FuseClient, InitOut)> {
        FuseClient::connect_offering(socket, 0)
    }

    /// As [`FuseClient::connect`], offering `flags2` in INIT (with
    /// FUSE_INIT_EXT and protocol 7.38, as a newer Linux does) when not 0.
    pub fn connect_offering(socket: &Path, flags2: u32) -> io::Result<(FuseClient, InitOut)> {
        // hiprio + one request queue; room for the queues and two buffers.
        let probe = crate::split_queue::SplitQueue::footprint(256) * 2;
        let mem_size = probe + 2 * u64::from(BUF_CAP) + (1 << 20);
        let dev = VhostUserDevice::connect(socket, 2, mem_size, 0)?;
        let req_addr = dev.data_start.next_multiple_of(4096);
        let mut client = FuseClient {
            dev,
            unique: 0,
            req_addr,
            reply_addr: req_addr + u64::from(BUF_CAP),
            pid: 1,
            uid: 0,
            gid: 0,
        };
        let init = client.init(flags2)?;
        Ok((client, init))
    }

    pub fn device(&mut self) -> &mut VhostUserDevice {
        &mut self.dev
    }

    /// Sends `opcode` for `nodeid` with `body` after the header and waits
    /// for the reply; returns the reply's body or its errno.
    pub fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[&[u8]]) -> io::Result<Vec<u8>> {
        self.call_with_reply(opcode, nodeid, body, BUF_CAP)
    }

    /// As [`call`](Self::call) with a reply buffer of `reply_cap` bytes.
    /// Data replies (READ, READDIRPLUS) get exactly header + size, as the
    /// Linux driver gives them: virtiofsd reads into the whole buffer.
    fn call_with_reply(&mut self, opcode: Opcode, nodeid: u64, body: &[&[u8]], reply_cap: u32) -> io::Result<Vec<u8>> {
        let len: usize = std::mem::size_of::<InHeader>() + body.iter().map(|b| b.len()).sum::<usize>();
        self.unique += 1;
        let header = InHeader {
            len: len as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            padding: 0,
        };
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(header.as_slice());
        for part in body {
            req.extend_from_slice(part);
        }
        let reply_cap = if matches!(opcode, Opcode::Forget | Opcode::BatchForget) {
            0
        } else {
            reply_cap.min(BUF_CAP)
        };
        let (error, unique, reply) = self.exchange(&req, reply_cap)?;
        if reply_cap > 0 && unique != self.unique {
            return Err(io::Error::other(format!(
                "reply for request {unique}, expected {}",
                self.unique
            )));
        }
        if error != 0 {
            return Err(io::Error::from_raw_os_error(-error));
        }
        Ok(reply)
    }

    /// Sends `request` bytes as they are (for malformed requests) with a
    /// reply buffer of `reply_cap` bytes; returns (error, body). A reply
    /// the back end did not write (length 0) is error EIO.
    pub fn raw(&mut self, request: &[u8], reply_cap: u32) -> io::Result<(i32, Vec<u8>)> {
        self.exchange(request, reply_cap).map(|(error, _, body)| (error, body))
    }

    fn exchange(&mut self, request: &[u8], reply_cap: u32) -> io::Result<(i32, u64, Vec<u8>)> {
        if request.len() > BUF_CAP as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request over the driver's buffer",
            ));
        }
        let mem = self.dev.memory();
        mem.write_slice(request, GuestAddress(self.req_addr))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut bufs = vec![Buffer::readable(self.req_addr, request.len() as u32)];
        if reply_cap > 0 {
            bufs.push(Buffer::writable(self.reply_addr, reply_cap.min(BUF_CAP)));
        }
        let (queue, head) = if reply_cap == 0 {
            (HIPRIO_QUEUE, self.dev.submit(HIPRIO_QUEUE, &bufs)?)
        } else {
            (REQUEST_QUEUE, self.dev.submit(REQUEST_QUEUE, &bufs)?)
        };
        let (used_head, written) = self.dev.complete(queue, TIMEOUT)?;
        if used_head != u32::from(head) {
            return Err(io::Error::other(format!(
                "back end returned chain {used_head}, expected {head}"
            )));
        }
        if reply_cap == 0 {
            return Ok((0, 0, Vec::new()));
        }
        self.read_reply(written)
    }

    /// Offers `bufs` as one chain on the request queue (for chains a
    /// driver should never build) and returns the bytes the back end says
    /// it wrote.
    pub fn raw_chain(&mut self, bufs: &[Buffer]) -> io::Result<u32> {
        let head = self.dev.submit(REQUEST_QUEUE, bufs)?;
        let (used_head, written) = self.dev.complete(REQUEST_QUEUE, TIMEOUT)?;
        if used_head != u32::from(head) {
            return Err(io::Error::other(format!(
                "back end returned chain {used_head}, expected {head}"
            )));
        }
        Ok(written)
    }

    /// Puts `request` in the driver's request buffer and returns its guest
    /// address (for raw chains).
    pub fn stage_request(&mut self, request: &[u8]) -> io::Result<u64> {
        self.dev
            .memory()
            .write_slice(request, GuestAddress(self.req_addr))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(self.req_addr)
    }

    fn read_reply(&mut self, written: u32) -> io::Result<(i32, u64, Vec<u8>)> {
        let hdr_len = std::mem::size_of::<OutHeader>();
        if (written as usize) < hdr_len {
            return Ok((-libc::EIO, self.unique, Vec::new()));
        }
        let mem = self.dev.memory();
        let out: OutHeader = mem
            .read_obj(GuestAddress(self.reply_addr))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let body_len = (out.len as usize).min(written as usize).saturating_sub(hdr_len);
        let mut body = vec![0u8; body_len];
        mem.read_slice(&mut body, GuestAddress(self.reply_addr + hdr_len as u64))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok((out.error, out.unique, body))
    }

    fn init(&mut self, flags2: u32) -> io::Result<InitOut> {
        // FUSE_INIT_EXT: a second word of flags follows (11 more unused).
        const INIT_EXT: u32 = 1 << 30;
        let init = InitIn {
            major: 7,
            minor: if flags2 != 0 { 38 } else { 31 },
            max_readahead: 128 << 10,
            // ASYNC_READ | BIG_WRITES | DO_READDIRPLUS | PARALLEL_DIROPS |
            // MAX_PAGES (requests up to 1 MiB, as a Linux guest asks) |
            // SUBMOUNTS
            flags: 0x1 | 0x20 | 0x2000 | 0x40000 | 0x40_0000 | 0x800_0000 | if flags2 != 0 { INIT_EXT } else { 0 },
        };
        let mut ext = [0u8; 48];
        ext[..4].copy_from_slice(&flags2.to_le_bytes());
        let body = if flags2 != 0 {
            self.call(Opcode::Init, 0, &[init.as_slice(), &ext])?
        } else {
            self.call(Opcode::Init, 0, &[init.as_slice()])?
        };
        decode(&body)
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> io::Result<EntryOut> {
        let name = cstr(name)?;
        decode(&self.call(Opcode::Lookup, parent, &[name.as_bytes_with_nul()])?)
    }

    /// Looks up a path of `/`-separated names from the root, one LOOKUP a
    /// component.
    pub fn walk(&mut self, path: &str) -> io::Result<EntryOut> {
        let mut entry = self.getattr_entry(ROOT)?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            entry = self.lookup(entry.nodeid, part.as_bytes())?;
        }
        Ok(entry)
    }

    fn getattr_entry(&mut self, nodeid: u64) -> io::Result<EntryOut> {
        let attr = self.getattr(nodeid)?;
        Ok(EntryOut {
            nodeid,
            attr,
            ..Default::default()
        })
    }

    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> io::Result<()> {
        self.call(Opcode::Forget, nodeid, &[&nlookup.to_ne_bytes()]).map(drop)
    }

    pub fn getattr(&mut self, nodeid: u64) -> io::Result<Attr> {
        let body = self.call(Opcode::Getattr, nodeid, &[GetattrIn::default().as_slice()])?;
        Ok(decode::<AttrOut>(&body)?.attr)
    }

    pub fn setattr(&mut self, nodeid: u64, set: &SetattrIn) -> io::Result<Attr> {
        let body = self.call(Opcode::Setattr, nodeid, &[set.as_slice()])?;
        Ok(decode::<AttrOut>(&body)?.attr)
    }

    pub fn readlink(&mut self, nodeid: u64) -> io::Result<Vec<u8>> {
        self.call(Opcode::Readlink, nodeid, &[])
    }

    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> io::Result<EntryOut> {
        let (name, target) = (cstr(name)?, cstr(target)?);
        let body = self.call(
            Opcode::Symlink,
            parent,
            &[name.as_bytes_with_nul(), target.as_bytes_with_nul()],
        )?;
        decode(&body)
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> io::Result<EntryOut> {
        let name = cstr(name)?;
        let arg = MkdirIn { mode, umask: 0 };
        decode(&self.call(Opcode::Mkdir, parent, &[arg.as_slice(), name.as_bytes_with_nul()])?)
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> io::Result<()> {
        let name = cstr(name)?;
        self.call(Opcode::Unlink, parent, &[name.as_bytes_with_nul()]).map(drop)
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> io::Result<()> {
        let name = cstr(name)?;
        self.call(Opcode::Rmdir, parent, &[name.as_bytes_with_nul()]).map(drop)
    }

    pub fn rename(&mut self, olddir: u64, old: &[u8], newdir: u64, new: &[u8]) -> io::Result<()> {
        let (old, new) = (cstr(old)?, cstr(new)?);
        let arg = RenameIn { newdir };
        self.call(
            Opcode::Rename,
            olddir,
            &[arg.as_slice(), old.as_bytes_with_nul(), new.as_bytes_with_nul()],
        )
        .map(drop)
    }

    pub fn link(&mut self, oldnodeid: u64, newparent: u64, newname: &[u8]) -> io::Result<EntryOut> {
        let name = cstr(newname)?;
        let arg = LinkIn { oldnodeid };
        decode(&self.call(Opcode::Link, newparent, &[arg.as_slice(), name.as_bytes_with_nul()])?)
    }

    pub fn open(&mut self, nodeid: u64, flags: i32) -> io::Result<u64> {
        let arg = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        Ok(decode::<OpenOut>(&self.call(Opcode::Open, nodeid, &[arg.as_slice()])?)?.fh)
    }

    pub fn create(&mut self, parent: u64, name: &[u8], flags: i32, mode: u32) -> io::Result<(EntryOut, u64)> {
        let name = cstr(name)?;
        let arg = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let body = self.call(Opcode::Create, parent, &[arg.as_slice(), name.as_bytes_with_nul()])?;
        let entry: EntryOut = decode(&body)?;
        let open: OpenOut = decode(body.get(std::mem::size_of::<EntryOut>()..).unwrap_or(&[]))?;
        Ok((entry, open.fh))
    }

    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        self.data_request(Opcode::Read, nodeid, fh, offset, size)
    }

    /// READ carrying the file's open flags, as Linux sends `file->f_flags`.
    pub fn read_flagged(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32, flags: i32) -> io::Result<Vec<u8>> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            flags: flags as u32,
            ..Default::default()
        };
        let cap = (std::mem::size_of::<OutHeader>() as u32).saturating_add(size);
        self.call_with_reply(Opcode::Read, nodeid, &[arg.as_slice()], cap)
    }

    /// READ and READDIRPLUS: a `ReadIn`, and a reply buffer of header +
    /// `size` bytes.
    fn data_request(&mut self, opcode: Opcode, nodeid: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let cap = (std::mem::size_of::<OutHeader>() as u32).saturating_add(size);
        self.call_with_reply(opcode, nodeid, &[arg.as_slice()], cap)
    }

    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let arg = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        Ok(decode::<WriteOut>(&self.call(Opcode::Write, nodeid, &[arg.as_slice(), data])?)?.size)
    }

    pub fn release(&mut self, nodeid: u64, fh: u64) -> io::Result<()> {
        let arg = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Release, nodeid, &[arg.as_slice()]).map(drop)
    }

    pub fn fsync(&mut self, nodeid: u64, fh: u64) -> io::Result<()> {
        let arg = FsyncIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Fsync, nodeid, &[arg.as_slice()]).map(drop)
    }

    pub fn statfs(&mut self, nodeid: u64) -> io::Result<Kstatfs> {
        Ok(decode::<StatfsOut>(&self.call(Opcode::Statfs, nodeid, &[])?)?.st)
    }

    pub fn opendir(&mut self, nodeid: u64) -> io::Result<u64> {
        let arg = OpenIn::default();
        Ok(decode::<OpenOut>(&self.call(Opcode::Opendir, nodeid, &[arg.as_slice()])?)?.fh)
    }

    pub fn releasedir(&mut self, nodeid: u64, fh: u64) -> io::Result<()> {
        let arg = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Releasedir, nodeid, &[arg.as_slice()]).map(drop)
    }

    /// One READDIRPLUS of up to `size` bytes from `offset`.
    pub fn readdirplus(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<DirEntry>> {
        let body = self.data_request(Opcode::Readdirplus, nodeid, fh, offset, size)?;
        let mut out = Vec::new();
        let mut at = 0;
        let fixed = std::mem::size_of::<Direntplus>();
        while at + fixed <= body.len() {
            let d: Direntplus = decode(&body[at..])?;
            let name_end = at + fixed + d.dirent.namelen as usize;
            let name = body
                .get(at + fixed..name_end)
                .ok_or_else(|| io::Error::other("READDIRPLUS entry runs past the reply"))?;
            out.push(DirEntry {
                name: name.to_vec(),
                entry: d.entry_out,
                offset: d.dirent.off,
            });
            at = name_end.next_multiple_of(8);
        }
        Ok(out)
    }

    /// Every entry of directory `nodeid`, through READDIRPLUS.
    pub fn list_dir(&mut self, nodeid: u64) -> io::Result<Vec<DirEntry>> {
        let fh = self.opendir(nodeid)?;
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let batch = self.readdirplus(nodeid, fh, offset, 64 << 10)?;
            let Some(last) = batch.last() else { break };
            offset = last.offset;
            all.extend(batch);
        }
        self.releasedir(nodeid, fh)?;
        Ok(all)
    }

    pub fn setxattr(&mut self, nodeid: u64, name: &[u8], value: &[u8]) -> io::Result<()> {
        let name = cstr(name)?;
        let arg = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        self.call(
            Opcode::Setxattr,
            nodeid,
            &[arg.as_slice(), name.as_bytes_with_nul(), value],
        )
        .map(drop)
    }

    pub fn getxattr(&mut self, nodeid: u64, name: &[u8], size: u32) -> io::Result<Vec<u8>> {
        let name = cstr(name)?;
        let arg = GetxattrIn { size, padding: 0 };
        self.call(Opcode::Getxattr, nodeid, &[arg.as_slice(), name.as_bytes_with_nul()])
    }

    /// LISTXATTR: with `size` 0 the reply is the list's length (a 4-byte
    /// count and padding), else the NUL-terminated names.
    pub fn listxattr(&mut self, nodeid: u64, size: u32) -> io::Result<Vec<u8>> {
        let arg = GetxattrIn { size, padding: 0 };
        self.call(Opcode::Listxattr, nodeid, &[arg.as_slice()])
    }

    pub fn removexattr(&mut self, nodeid: u64, name: &[u8]) -> io::Result<()> {
        let name = cstr(name)?;
        self.call(Opcode::Removexattr, nodeid, &[name.as_bytes_with_nul()])
            .map(drop)
    }
}
