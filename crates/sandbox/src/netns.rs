//! Network namespaces made ahead of an instance, so the server can listen inside one.
//!
//! An instance without network normally gets a fresh network namespace from `clone3`, which
//! nothing outside the instance can reach. A service the server provides to one instance (the
//! custom runtime's API) needs the opposite: a listener that only that instance can reach. So
//! the namespace is made first, by a short-lived thread of the server, the listener is bound
//! inside it, and the instance then joins it ([`Network::Joined`](crate::Network::Joined))
//! instead of making its own.
//!
//! ```text
//!  server thread ── unshare(CLONE_NEWNET), lo up, open /proc/thread-self/ns/net ──> NetNamespace
//!  server thread ── setns(namespace), bind 127.0.0.1:port ──────────────────────> TcpListener
//!  waiter (child) ── setns(namespace) before clone3, which then leaves CLONE_NEWNET out
//! ```
//!
//! Only the calling thread changes namespace (`unshare` and `setns` act on one thread for
//! network namespaces), and that thread ends right after, so the server's other threads never
//! see it. The namespace lives as long as its descriptor or any socket bound inside it.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::sched::{CloneFlags, setns, unshare};

use crate::child::bring_up_loopback;

/// A network namespace with only a loopback interface, up. Clones share the namespace.
#[derive(Clone)]
pub struct NetNamespace {
    fd: Arc<OwnedFd>,
}

impl NetNamespace {
    /// Makes a namespace. Needs `CAP_SYS_ADMIN` (the server runs as root to sandbox).
    ///
    /// # Errors
    ///
    /// The failed system call's error: `unshare`, bringing `lo` up, or opening the namespace.
    pub fn new() -> io::Result<NetNamespace> {
        in_own_thread(|| {
            unshare(CloneFlags::CLONE_NEWNET)?;
            bring_up_loopback()?;
            let file = std::fs::File::open("/proc/thread-self/ns/net")?;
            Ok(NetNamespace {
                fd: Arc::new(OwnedFd::from(file)),
            })
        })
    }

    /// Binds a TCP listener at `address` inside the namespace (blocking mode, as `std` makes
    /// it). Only processes in the namespace can connect to it.
    ///
    /// # Errors
    ///
    /// The error of `setns` or of binding.
    pub fn bind_tcp(&self, address: SocketAddr) -> io::Result<TcpListener> {
        in_own_thread(|| {
            setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)?;
            TcpListener::bind(address)
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PartialEq for NetNamespace {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.fd, &other.fd)
    }
}

impl Eq for NetNamespace {}

impl fmt::Debug for NetNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NetNamespace").field(&self.fd).finish()
    }
}

/// Runs `work` on a thread of its own, so that namespace changes end with that thread.
fn in_own_thread<T: Send>(work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(work)
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("network namespace thread panicked")))
    })
}
