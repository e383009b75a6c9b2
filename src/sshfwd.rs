//! gvproxy's `-forward-sock`: a unix socket on the host whose connections
//! are carried over SSH to a unix socket in the guest (podman machine uses
//! it for the guest's podman API socket).
//!
//! As gvproxy: the SSH connection is made from the gateway to the guest's
//! port 22 through the virtual network itself (not through `-ssh-port`, which
//! may be off), authenticated with the identity file as the given user,
//! retried until the guest's sshd answers; every host connection becomes one
//! `direct-streamlocal@openssh.com` channel (what `ssh -L SOCK:DEST` opens),
//! with half-close carried both ways. A session that died (guest rebooted) is
//! re-established on the next connection.
//!
//! The SSH client is russh (a maintained pure-Rust client), running on the
//! network's own runtime.

use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_net::forward::GuestTarget;
use ferry_net::stack::StackRef;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};

/// System calls the SSH client makes once the network is up, beside ferry
/// net's (the seccomp allow-list): russh keeps key material in buffers it
/// locks into memory.
#[cfg(target_os = "linux")]
pub const SYSCALLS: &[libc::c_long] = &[libc::SYS_mlock, libc::SYS_munlock];

/// One `-forward-sock/-forward-dest/-forward-user/-forward-identity` set.
#[derive(Clone, Debug)]
pub struct SocketForward {
    /// Host socket to listen on.
    pub socket: PathBuf,
    /// Unix socket path in the guest.
    pub dest: String,
    pub user: String,
    pub identity: PathBuf,
}

/// gvproxy's schedule for "Waiting for sshd": 100 ms doubling to 1 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// gvproxy gives up after 60 attempts (about a minute) and exits; a guest
/// that boots slower (TCG, a big image) should not cost the user their
/// network, so ferry keeps trying and says so once at that point.
const PATIENCE: u32 = 60;
/// How long one attempt waits for the guest's TCP handshake.
const DIAL_WAIT: Duration = Duration::from_secs(5);

/// Loads the identity now, so a bad file is reported at start-up as gvproxy
/// does, not at the first connection.
pub fn load_identity(path: &Path) -> anyhow::Result<Arc<PrivateKey>> {
    let key = russh::keys::load_secret_key(path, None).with_context(|| {
        format!(
            "-forward-identity {}: cannot load the SSH private key (an OpenSSH or PEM key without a passphrase is needed)",
            path.display()
        )
    })?;
    Ok(Arc::new(key))
}

/// Binds the host socket (owner-only, as gvproxy's umask 0177) and starts
/// serving it on the network's thread.
pub fn spawn(stack: &StackRef, guest: GuestTarget, fwd: SocketForward, key: Arc<PrivateKey>) -> anyhow::Result<()> {
    match std::fs::remove_file(&fwd.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("-forward-sock {}: removing the old socket", fwd.socket.display()))
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(&fwd.socket)
        .with_context(|| format!("-forward-sock {}: cannot listen", fwd.socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fwd.socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("-forward-sock {}: setting its mode", fwd.socket.display()))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let forward = Forward {
        stack: Rc::downgrade(stack),
        guest,
        fwd,
        key,
        session: None,
    };
    tokio::task::spawn_local(forward.serve(listener));
    Ok(())
}

struct Forward {
    stack: Weak<std::cell::RefCell<ferry_net::stack::Stack>>,
    guest: GuestTarget,
    fwd: SocketForward,
    key: Arc<PrivateKey>,
    session: Option<russh::client::Handle<AnyHostKey>>,
}

/// The guest's host key is not checked, as gvproxy does not by default: the
/// connection runs over the private link ferry itself serves, to the address
/// ferry leased, so there is no path a third party could sit on.
struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

impl Forward {
    async fn serve(mut self, listener: tokio::net::UnixListener) {
        // Connections made while sshd is still coming up wait in the
        // listen backlog, as with gvproxy.
        if !self.connect_patiently().await {
            return;
        }
        tracing::info!(socket = %self.fwd.socket.display(), dest = %self.fwd.dest, "socket forward established");
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    tracing::warn!(socket = %self.fwd.socket.display(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.open_channel().await {
                Ok(channel) => {
                    tokio::task::spawn_local(async move {
                        let mut conn = conn;
                        let mut remote = channel.into_stream();
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut remote).await;
                    });
                }
                // As gvproxy: this connection is closed, the next one tries again.
                Err(e) => tracing::error!(socket = %self.fwd.socket.display(), dest = %self.fwd.dest, "{e:#}"),
            }
        }
    }

    /// Retries until the guest's sshd accepts us; false once the network
    /// is gone.
    async fn connect_patiently(&mut self) -> bool {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1.. {
            if self.stack.upgrade().is_none() {
                return false;
            }
            match self.connect().await {
                Ok(session) => {
                    self.session = Some(session);
                    return true;
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "waiting for sshd ({backoff:?})");
                    if attempt == PATIENCE {
                        tracing::warn!(
                            dest = %self.fwd.dest,
                            error = %format!("{e:#}"),
                            "the guest's sshd has not accepted the SSH forward for about a minute; still trying"
                        );
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        false
    }

    async fn connect(&self) -> anyhow::Result<russh::client::Handle<AnyHostKey>> {
        let stack = self.stack.upgrade().context("the network stopped")?;
        let stream = ferry_net::forward::dial_guest(&stack, self.guest.clone(), 22, DIAL_WAIT)?;
        drop(stack);
        let config = Arc::new(russh::client::Config {
            // Find a dead session (guest gone) before a user does.
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        });
        let mut session = russh::client::connect_stream(config, stream, AnyHostKey)
            .await
            .with_context(|| format!("SSH to {}:22", self.guest))?;
        let hash = match self.key.algorithm() {
            russh::keys::Algorithm::Rsa { .. } => session
                .best_supported_rsa_hash()
                .await?
                .flatten()
                .or(Some(HashAlg::Sha256)),
            _ => None,
        };
        let auth = session
            .authenticate_publickey(&self.fwd.user, PrivateKeyWithHashAlg::new(self.key.clone(), hash))
            .await?;
        anyhow::ensure!(
            auth.success(),
            "SSH to {}:22: the guest refused the key {} for user {:?}",
            self.guest,
            self.fwd.identity.display(),
            self.fwd.user
        );
        Ok(session)
    }

    /// A channel to the guest socket; re-establishes the session if it
    /// died (up to three tries, as gvproxy).
    async fn open_channel(&mut self) -> anyhow::Result<russh::Channel<russh::client::Msg>> {
        let mut last = None;
        for _ in 0..3 {
            if let Some(session) = &self.session {
                if !session.is_closed() {
                    match session.channel_open_direct_streamlocal(self.fwd.dest.clone()).await {
                        Ok(ch) => return Ok(ch),
                        Err(e) => last = Some(anyhow::Error::from(e)),
                    }
                }
            }
            if self.session.as_ref().is_none_or(|s| s.is_closed()) {
                match self.connect().await {
                    Ok(s) => self.session = Some(s),
                    Err(e) => last = Some(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no SSH session")))
            .with_context(|| format!("couldn't reach {} in the guest over SSH", self.fwd.dest))
    }
}
