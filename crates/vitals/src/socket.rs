//! Socket options for liveness: TCP_NODELAY, OS keepalive as a backstop, TCP_USER_TIMEOUT from the timeout.
//!
//! vitals' own heartbeats convict a silent peer after `timeout`. The kernel gets two backstops derived
//! from that same number, so that a connection the application stopped driving still dies:
//! - OS keepalive: first probe after `timeout`, then every `timeout / 3`, 3 probes.
//! - TCP_USER_TIMEOUT (Linux): unacknowledged data older than `timeout` (at least 1 s) aborts the
//!   connection, which covers the case keepalive cannot (data stuck in the send buffer of a dead path).

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Which options to apply, derived from the liveness timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Disable Nagle's algorithm (heartbeats are tiny and latency-sensitive). Default true.
    pub nodelay: bool,
    /// OS keepalive idle time; `None` leaves keepalive off.
    pub keepalive: Option<Duration>,
    /// TCP_USER_TIMEOUT on Linux; `None` leaves the kernel default.
    pub user_timeout: Option<Duration>,
}

impl SocketOptions {
    /// The options vitals uses for a liveness `timeout`.
    pub fn for_timeout(timeout: Duration) -> Self {
        SocketOptions {
            nodelay: true,
            keepalive: Some(timeout.max(Duration::from_secs(1))),
            user_timeout: Some(timeout.max(Duration::from_secs(1))),
        }
    }

    /// Applies the options to any socket (std, tokio or mio TCP stream).
    pub fn apply<S>(&self, socket: &S) -> io::Result<()>
    where
        S: std::os::fd::AsFd,
    {
        let sock = SockRef::from(socket);
        sock.set_tcp_nodelay(self.nodelay)?;
        if let Some(idle) = self.keepalive {
            let probe_every = (idle / 3).max(Duration::from_secs(1));
            let params = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(probe_every)
                .with_retries(3);
            sock.set_tcp_keepalive(&params)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(t) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_set_on_a_real_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let opts = SocketOptions::for_timeout(Duration::from_secs(6));
        opts.apply(&stream).unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(6));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        #[cfg(target_os = "linux")]
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(6))
        );
    }
}
