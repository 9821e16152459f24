//! The socket under a connection (Unix or TCP), connecting to it without blocking past a deadline, and waking a
//! thread blocked on it from another.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Weak;
use std::time::{Duration, Instant};

pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// Wakes a thread blocked on a connection from another thread. It does not keep the socket open: once the
/// connection is dropped, the socket closes (QEMU sees its client leave) and interrupting does nothing. Only the
/// process that opened the connection may use it: in a forked child the socket is the parent's too.
#[derive(Clone)]
pub struct Interrupter(pub(super) Weak<Stream>);

impl Interrupter {
    pub fn interrupt(&self) {
        let _ = match self.0.upgrade().as_deref() {
            Some(Stream::Unix(s)) => s.shutdown(std::net::Shutdown::Both),
            Some(Stream::Tcp(s)) => s.shutdown(std::net::Shutdown::Both),
            None => Ok(()),
        };
    }
}

impl Interrupter {
    /// Whether the socket has something to read (or has been shut down) within `t`; None once the connection
    /// is gone. Reads nothing: whoever reads takes the connection's reader, under the monitor's lock.
    pub(super) fn readable_within(&self, t: Duration) -> Option<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let stream = self.0.upgrade()?;
        let fd = match stream.as_ref() {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let ms = PollTimeout::from(u16::try_from(t.as_millis()).unwrap_or(u16::MAX));
        // A signal (EINTR) reads as nothing yet: the caller looks again.
        Some(matches!(poll(&mut fds, ms), Ok(n) if n > 0))
    }
}

impl Stream {
    /// Who listens on the other end of a Unix socket; `None` for TCP, whose peer has no process here.
    pub(super) fn peer(&self) -> Option<Listener> {
        use nix::sys::socket::{getsockopt, sockopt};
        let Stream::Unix(s) = self else { return None };
        let cred = getsockopt(s, sockopt::PeerCredentials).ok()?;
        Some(Listener {
            uid: cred.uid(),
            // 0: a process in another pid namespace.
            pid: u32::try_from(cred.pid()).ok().filter(|&p| p > 0),
            now: match getsockopt(s, sockopt::PeerPidfd) {
                Ok(fd) => Some(pid_of(&fd)),
                // A kernel before 6.5: it cannot say.
                Err(nix::errno::Errno::ENOPROTOOPT) => None,
                // Kernels before 6.17 fail so once the listener's maker has exited and been reaped; any other
                // failure says nothing either: not the live process asked for.
                Err(_) => Some(None),
            },
        })
    }
    pub(super) fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }
    pub(super) fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }
    pub(super) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tcp(s) => (&*s).read(buf),
        }
    }
    /// Writes all of `buf` with `send(MSG_NOSIGNAL)`: a QEMU that went away is an EPIPE error here, never a
    /// SIGPIPE that ends a C caller left at the default disposition (whatever the Rust release does for its own
    /// writes).
    pub(super) fn send_all(&self, mut buf: &[u8]) -> io::Result<()> {
        let sock = match self {
            Stream::Unix(s) => socket2::SockRef::from(s),
            Stream::Tcp(s) => socket2::SockRef::from(s),
        };
        while !buf.is_empty() {
            match sock.send_with_flags(buf, libc::MSG_NOSIGNAL) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the socket took nothing")),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The process on the other end of a Unix socket, as the kernel recorded it when the socket was made to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listener {
    pub uid: u32,
    /// Its pid then (`SO_PEERCRED`): the number may have passed to another process since.
    pub pid: Option<u32>,
    /// Its pid now, through a pidfd of that very process (`SO_PEERPIDFD`, Linux 6.5): `Some(None)` once it has
    /// exited (or when it cannot be told in this pid namespace); `None` where the kernel has no such option.
    pub now: Option<Option<u32>>,
}

/// The pid a pidfd's process has now (`/proc/self/fdinfo`): `None` once it has exited, or outside our pid
/// namespace.
fn pid_of(fd: &std::os::fd::OwnedFd) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let pid: i64 = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()?;
    u32::try_from(pid).ok().filter(|&p| p > 0)
}

/// `connect()` on a Unix socket blocks, with no timeout, while the listener's backlog is full, and QEMU's
/// monitor keeps a backlog of one while it serves another client. So connect without blocking and retry
/// until the deadline.
pub(super) fn connect_unix(path: &std::path::Path, deadline: Instant) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path)?;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&addr) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the socket's backlog stayed full",
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}
