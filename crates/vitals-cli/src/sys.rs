//! What the CLI reads from the system: a process's (or a process tree's) RSS and CPU time (/proc), the
//! kernel's memory (/proc/meminfo, /proc/net/sockstat), the open-file limit (raised from soft to hard
//! where allowed), the ephemeral port range and the loopback source addresses that multiply it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Open files a process keeps for itself besides connections (runtime, epoll, stdio, listeners, …).
pub(crate) const FD_OVERHEAD: u64 = 64;

/// Resident set size of process `pid` in bytes (`VmRSS` in /proc/PID/status).
pub(crate) fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS line in /proc/{pid}/status"),
        )
    })
}

/// The `VmRSS:  1234 kB` line of a /proc status file, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) process `pid` has used so far, from /proc/PID/stat.
pub(crate) fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// utime + stime (fields 14 and 15) of a /proc stat line, in clock ticks. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th field here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) use rustix::process::Signal;

/// Sends `sig` to process `pid` (a child: SIGSTOP / SIGCONT a bench child, SIGTERM a worker).
pub(crate) fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
    rustix::process::kill_process(pid, sig).map_err(io::Error::from)
}

/// The parent pid of `pid` (field 4 of /proc/PID/stat).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and all its living descendants (a `vitals serve --processes N` supervisor and its
/// workers), found by scanning /proc.
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                && let Some(pp) = parent_of(p)
            {
                parents.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let at = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == at).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// RSS of `pid` and its descendants, in bytes (processes that vanish meanwhile count nothing).
pub(crate) fn tree_rss_bytes(pid: u32) -> io::Result<u64> {
    rss_bytes(pid)?;
    Ok(process_tree(pid)
        .into_iter()
        .filter_map(|p| rss_bytes(p).ok())
        .sum())
}

/// CPU time (user + system) of `pid` and its living descendants so far.
pub(crate) fn tree_cpu_time(pid: u32) -> io::Result<Duration> {
    cpu_time(pid)?;
    Ok(process_tree(pid)
        .into_iter()
        .filter_map(|p| cpu_time(p).ok())
        .sum())
}

/// The kernel's memory that connections cost, read system-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct KernelMemory {
    /// `Slab` of /proc/meminfo (socket, inode, file, dentry and epoll objects live there), bytes.
    pub(crate) slab: u64,
    /// `SUnreclaim` of /proc/meminfo, bytes.
    pub(crate) slab_unreclaimable: u64,
    /// TCP socket buffers (`TCP: … mem P` of /proc/net/sockstat, pages), bytes.
    pub(crate) tcp_buffers: u64,
    /// `TCP: inuse` of /proc/net/sockstat: TCP sockets in use.
    pub(crate) tcp_sockets: u64,
}

/// Reads [`KernelMemory`] now.
pub(crate) fn kernel_memory() -> io::Result<KernelMemory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
    parse_kernel_memory(&meminfo, &sockstat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "cannot parse /proc/meminfo or /proc/net/sockstat",
        )
    })
}

fn parse_kernel_memory(meminfo: &str, sockstat: &str) -> Option<KernelMemory> {
    let kb = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let field = |name: &str| -> Option<u64> {
        let mut it = tcp.split_whitespace();
        it.position(|w| w == name)?;
        it.next()?.parse().ok()
    };
    let page = rustix::param::page_size() as u64;
    Some(KernelMemory {
        slab: kb("Slab:")?,
        slab_unreclaimable: kb("SUnreclaim:")?,
        tcp_buffers: field("mem")? * page,
        tcp_sockets: field("inuse")?,
    })
}

/// Bytes held by the objects in use of every slab cache (`active_objs × objsize` in /proc/slabinfo),
/// by cache name; `None` where /proc/slabinfo cannot be read (it needs root).
pub(crate) fn slab_caches() -> Option<std::collections::BTreeMap<String, u64>> {
    parse_slabinfo(&std::fs::read_to_string("/proc/slabinfo").ok()?)
}

fn parse_slabinfo(text: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let mut caches = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with("slabinfo") && !l.starts_with('#'))
    {
        let mut f = line.split_whitespace();
        let name = f.next()?;
        let active: u64 = f.next()?.parse().ok()?;
        let _total = f.next()?;
        let size: u64 = f.next()?.parse().ok()?;
        *caches.entry(name.to_string()).or_insert(0) += active * size;
    }
    Some(caches)
}

/// The open-file limit after raising the soft limit to the hard one where allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileLimit {
    /// The soft limit in force now.
    pub(crate) soft: u64,
    /// The hard limit (`u64::MAX` when unlimited).
    pub(crate) hard: u64,
}

/// Raises this process's soft open-file limit to its hard limit (where allowed) and returns both.
pub(crate) fn raise_file_limit() -> FileLimit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let hard = maximum.unwrap_or(u64::MAX);
    let mut soft = current.unwrap_or(u64::MAX);
    if soft < hard {
        let wanted = Rlimit {
            current: maximum,
            maximum,
        };
        match setrlimit(Resource::Nofile, wanted) {
            Ok(()) => soft = hard,
            Err(e) => tracing::debug!(error = %e, "could not raise the open-file soft limit"),
        }
    }
    FileLimit { soft, hard }
}

/// The ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`), inclusive; Linux's default
/// 32768–60999 when it cannot be read.
pub(crate) fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or((32768, 60999))
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace();
    let lo: u16 = it.next()?.parse().ok()?;
    let hi: u16 = it.next()?.parse().ok()?;
    (lo <= hi).then_some((lo, hi))
}

/// Connections one source address may take from a port range of `ports` ports: a third of it. Not just
/// to stay inside the range: the kernel's search for a free ephemeral port slows down as the range fills
/// (measured here: 19,000 connections from one address took 14.8 s to open, 1,282/s; from four addresses
/// 1.7 s, 10,973/s).
pub(crate) fn per_source(ports: u32) -> u32 {
    (ports / 3).max(1)
}

/// Most source addresses handed out: 127.0.0.1 … 127.0.3.254.
pub(crate) const MAX_SOURCES: u32 = 4 * 254;

/// The `i`-th loopback source address (from 0): 127.0.0.1 … 127.0.0.254, then 127.0.1.1 …
pub(crate) fn source_address(i: u32) -> IpAddr {
    let i = i.min(MAX_SOURCES - 1);
    IpAddr::V4(Ipv4Addr::new(127, 0, (i / 254) as u8, (i % 254 + 1) as u8))
}

/// How many source addresses `n` connections need: none (the system's choice) when one address's
/// share of the port range suffices (`force` overrides).
pub(crate) fn sources_needed(n: u32, ports: (u16, u16), force: Option<u32>) -> u32 {
    let range = u32::from(ports.1) - u32::from(ports.0) + 1;
    match force {
        Some(k) => k.min(MAX_SOURCES),
        None if n <= per_source(range) => 0,
        None => n.div_ceil(per_source(range)).min(MAX_SOURCES),
    }
}

/// The source addresses for `n` connections: none (the system's choice) when one address's share of
/// the port range suffices, else 127.0.0.1, .2, … as many as needed (`force` overrides the count).
pub(crate) fn source_addresses(n: u32, ports: (u16, u16), force: Option<u32>) -> Vec<IpAddr> {
    (0..sources_needed(n, ports, force))
        .map(source_address)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(s), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let s =
            "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 99 1 2";
        assert_eq!(parse_stat_ticks(s), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(rss_bytes(me).is_ok_and(|b| b > 0));
        assert!(cpu_time(me).is_ok());
    }

    #[test]
    fn port_range_and_sources() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("x"), None);
        let ports = (32768, 60999); // 28,232 ports: 9,410 per source
        assert!(source_addresses(9_000, ports, None).is_empty());
        let v = source_addresses(19_000, ports, None);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(v[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(source_addresses(10, ports, Some(2)).len(), 2);
        // A small range needs more sources: 33 per source.
        assert_eq!(source_addresses(1000, (40000, 40099), None).len(), 31);
        // A million needs 107 sources; past 127.0.0.254 they go on in 127.0.1.x.
        assert_eq!(sources_needed(1_000_000, ports, None), 107);
        assert_eq!(
            source_address(253),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 254))
        );
        assert_eq!(source_address(254), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)));
    }

    #[test]
    fn kernel_memory_and_the_process_tree() {
        let meminfo =
            "MemTotal: 100 kB\nSlab:   441124 kB\nSReclaimable: 1 kB\nSUnreclaim:  49556 kB\n";
        let sockstat =
            "sockets: used 22\nTCP: inuse 4 orphan 0 tw 99 alloc 4 mem 3\nUDP: inuse 0 mem 0\n";
        let k = parse_kernel_memory(meminfo, sockstat).unwrap();
        assert_eq!(k.slab, 441_124 * 1024);
        assert_eq!(k.slab_unreclaimable, 49_556 * 1024);
        assert_eq!(k.tcp_sockets, 4);
        assert_eq!(k.tcp_buffers, 3 * rustix::param::page_size() as u64);
        assert!(kernel_memory().is_ok());
        let slabinfo = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> …\nTCP 79 130 2368 13 8 : tunables 0 0 0 : slabdata 10 10 0\nfilp 807 945 192 21 1 : tunables 0 0 0 : slabdata 45 45 0\n";
        let caches = parse_slabinfo(slabinfo).unwrap();
        assert_eq!(caches.get("TCP"), Some(&(79 * 2368)));
        assert_eq!(caches.get("filp"), Some(&(807 * 192)));
        // The tree of this test's process holds itself and a child it starts.
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep");
        let tree = process_tree(me);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()), "{tree:?}");
        assert!(tree_rss_bytes(me).is_ok_and(|b| b > 0));
        assert!(tree_cpu_time(me).is_ok());
    }
}
