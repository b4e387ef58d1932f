//! The raw calls monoio does not offer: a non-blocking `MSG_PEEK` that tells whether
//! anything (bytes or EOF) is waiting on a socket without taking it, a `shutdown` by fd
//! (the idle sweep wakes a connection's wait with it), a second handle on a socket,
//! growing a pipe, and attaching a reuseport program to the listeners.

use std::os::fd::{AsRawFd, RawFd};

/// The lowest fd number not in use right now (the one the next new fd gets).
#[allow(unsafe_code)]
pub(crate) fn lowest_free_fd() -> Option<RawFd> {
    // SAFETY: eventfd takes no pointers; the fd it returns is ours and closed at once.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened here and is used by nothing else.
    unsafe {
        libc::close(fd);
    }
    Some(fd)
}

/// If `fd` is a pipe's read end, ask for `size` bytes of capacity (`F_SETPIPE_SZ`) and
/// return the size it has; `None` when `fd` is not a pipe's read end. The kernel refuses
/// sizes over `fs.pipe-max-size`, and any growth past `fs.pipe-user-pages-soft` pages
/// for an unprivileged user (`EPERM`): the pipe then keeps the size it has.
#[allow(unsafe_code)]
pub(crate) fn grow_pipe(fd: RawFd, size: u32) -> Option<u32> {
    // SAFETY: fstat writes into the zeroed struct we own; fcntl takes no pointers. `fd`
    // may be any fd of this process (or none): these calls only inspect or resize it.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return None;
        }
        if libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE != libc::O_RDONLY {
            return None;
        }
        libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int);
        u32::try_from(libc::fcntl(fd, libc::F_GETPIPE_SZ)).ok()
    }
}

/// `shutdown(fd, SHUT_RDWR)`: the peer sees EOF, and a wait for readability on the
/// socket completes. Errors (already shut down, reset) change nothing for the caller.
#[allow(unsafe_code)]
pub(crate) fn shutdown(fd: RawFd) {
    // SAFETY: shutdown takes no pointers; the caller keeps `fd` open (idle.rs: a
    // registration is dropped before its socket closes).
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// `TCP_USER_TIMEOUT`: the kernel fails the connection (`ETIMEDOUT` on the pending write)
/// when sent data stays unacknowledged, or queued data unsent behind a zero window (a
/// peer that stopped reading), for `limit` (Linux 5.1+ for the zero window). The bound
/// on a client that stops reading its answer, at no cost per write (a timer per write
/// cost ~1 µs per small request, `loadtest/scripts/ab.sh`).
#[allow(unsafe_code)]
pub(crate) fn set_user_timeout(fd: RawFd, limit: std::time::Duration) {
    let ms = libc::c_uint::try_from(limit.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: `ms` outlives the call and its size is passed; the caller owns `fd`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            std::ptr::addr_of!(ms).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        );
    }
}

/// A second stream on the socket `fd` (`dup`): one task can write on it while another
/// reads on the first. Closing it leaves the socket open through `fd`.
#[allow(unsafe_code)]
pub(crate) fn twin(fd: RawFd) -> std::io::Result<monoio::net::TcpStream> {
    // SAFETY: the caller keeps the stream that owns `fd` open for the call; the borrow
    // ends before this returns, and `try_clone_to_owned` makes a new fd of our own.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    let stream = monoio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `SO_ATTACH_REUSEPORT_CBPF` from asm-generic/socket.h (x86-64 and arm64 use it);
/// the libc crate exports it only for Android.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Attach a classic BPF program to the `SO_REUSEPORT` group `listener` belongs to: it
/// then picks the listener of each new connection (Linux 4.5+).
#[allow(unsafe_code)]
pub(crate) fn attach_reuseport_cbpf(
    listener: &impl AsRawFd,
    program: &[libc::sock_filter],
) -> std::io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies the
    // instructions and only reads through the pointer. The length is the struct's size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What is waiting on a socket right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Nothing: the socket is quiet (EAGAIN).
    Nothing,
    /// Unread bytes.
    Bytes,
    /// The peer closed its side (EOF).
    Eof,
    /// An error is pending (reset, …).
    Error,
}

/// One `recv(fd, 1 byte, MSG_PEEK | MSG_DONTWAIT)`: never blocks, consumes nothing.
#[allow(unsafe_code)]
pub(crate) fn peek(socket: &impl AsRawFd) -> Waiting {
    let mut byte = 0u8;
    // SAFETY: `socket` is borrowed, so the fd stays open for the call; the pointer and
    // length describe one writable byte on our stack; MSG_PEEK leaves the data queued.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Waiting::Eof,
        n if n > 0 => Waiting::Bytes,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Waiting::Nothing,
            _ => Waiting::Error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_only_a_pipes_read_end() {
        let (r, w) = std::io::pipe().unwrap();
        let grown = grow_pipe(r.as_raw_fd(), 256 * 1024).expect("a read end");
        assert!(grown >= 256 * 1024, "{grown}");
        assert_eq!(grow_pipe(w.as_raw_fd(), 256 * 1024), None, "write end");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(grow_pipe(l.as_raw_fd(), 256 * 1024), None, "a socket");
        assert_eq!(grow_pipe(-1, 256 * 1024), None, "no fd");
    }

    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};

    #[test]
    fn tells_quiet_bytes_and_eof_apart_without_consuming() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        assert_eq!(peek(&b), Waiting::Nothing);
        a.write_all(b"x").unwrap();
        let bytes = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            peek(&b) == Waiting::Bytes
        });
        assert!(bytes);
        // Still there: peeking took nothing.
        assert_eq!(peek(&b), Waiting::Bytes);
        let mut one = [0u8; 1];
        std::io::Read::read_exact(&mut &b, &mut one).unwrap();
        a.shutdown(Shutdown::Write).unwrap();
        let eof = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            peek(&b) == Waiting::Eof
        });
        assert!(eof);
    }
}
