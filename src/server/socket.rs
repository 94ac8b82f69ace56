//! What every accepted connection's socket is set to before it is served.
//!
//! `TCP_NOTSENT_LOWAT` (Linux) bounds the bytes a connection may have written but not yet sent.
//! Without it a connection whose send buffer had grown could queue megabytes in the kernel
//! while one just opened, its buffer still small, got a small share of every turn. With 64
//! concurrent 5 MB downloads on fresh connections (wrk, 4 s runs, as `bench/run.sh` starts each
//! of its own) the slowest responses took up to 1 s against a median of 55 ms. With the bound,
//! each connection holds at most [`UNSENT_LIMIT`] beyond what is in flight, so the kernel's
//! queues stay even and so do the downloads: in alternating 4 s runs the slowest was 126 to
//! 196 ms and p99 79 to 95 ms, against 189 ms to 1.03 s and 84 to 581 ms without it, at the
//! same throughput.
//!
//! Bytes in flight are not bounded, so a long or fast network is not slowed: the kernel wakes
//! the writer once less than half the bound is left unsent, still 0.1 ms of sending at
//! 10 Gbit/s. 128 KB cost 7 % of the 5 MB throughput; 512 KB let the slowest back up to 310 ms.

use tokio::net::TcpStream;

/// The most bytes a connection may have written and not yet sent. It was measured together
/// with the 256 KB slices archives in memory are handed to hyper in (`MEMORY_FRAME` in
/// `routes::handlers`): one slice fits within it, so a connection's turn gives the kernel
/// about one slice, not the many a grown send buffer took.
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNSENT_LIMIT: u32 = 256 * 1024;

/// Sets an accepted connection's socket options. A failure costs only what the option is for,
/// so the connection is served either way.
pub(super) fn tune(stream: &TcpStream) {
    // Answers are written whole, head and body together; nothing is gained by waiting.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    // The option is Linux's (and Android's); elsewhere the kernel's default stands.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LIMIT) {
        tracing::debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
    }
}

/// The CPU that took the connection's last packets in (`SO_INCOMING_CPU`, Linux), where
/// known: with a multi-queue network card, the CPU its queue interrupts; on loopback, the
/// CPU the client's thread ran on.
#[cfg(target_os = "linux")]
pub(super) fn incoming_cpu(stream: &TcpStream) -> Option<usize> {
    let cpu = socket2::SockRef::from(stream).cpu_affinity().ok()?;
    // The kernel's -1 (not known yet) comes back wrapped to the largest usize.
    isize::try_from(cpu).is_ok().then_some(cpu)
}

/// Elsewhere no such option: connections go to the least busy thread.
#[cfg(not(target_os = "linux"))]
pub(super) fn incoming_cpu(_stream: &TcpStream) -> Option<usize> {
    None
}

/// A loopback connection as the accept loop gets it: the accepted socket, its peer's address,
/// and the client's end (kept, so the connection stays open).
#[cfg(test)]
pub(super) async fn accepted_loopback() -> (TcpStream, std::net::SocketAddr, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (accepted, client) = tokio::join!(listener.accept(), client);
    let (stream, peer) = accepted.unwrap();
    (stream, peer, client.unwrap())
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_send_at_once_and_bound_what_waits_unsent() {
        let (stream, _, _client) = accepted_loopback().await;
        let socket = socket2::SockRef::from(&stream);
        // Other values than `tune` sets, whatever the machine's defaults, so the test shows
        // that it changed them.
        stream.set_nodelay(false).unwrap();
        socket.set_tcp_notsent_lowat(1).unwrap();

        tune(&stream);

        assert!(stream.nodelay().unwrap());
        assert_eq!(socket.tcp_notsent_lowat().unwrap(), UNSENT_LIMIT);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_cpu_that_took_a_connection_in_is_known() {
        let (stream, _, _client) = accepted_loopback().await;

        let cpu = incoming_cpu(&stream).expect("the handshake came in on some CPU");

        // On loopback the handshake ends on the CPU of the thread that connected, this one: a
        // CPU it may run on, not the kernel's -1 wrapped. (A container's /proc/stat may number
        // its CPUs afresh; the affinity mask has the kernel's numbers.)
        let allowed = rustix::thread::sched_getaffinity(None).unwrap();
        assert!(allowed.is_set(cpu), "{cpu}");
    }
}
