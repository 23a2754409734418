//! Reading a process's resident memory and CPU time from `/proc`, and raising our own
//! file-descriptor limit to its hard maximum.

/// Resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// The anonymous part of the resident set (`RssAnon`): the heap and stacks, without
/// the pages of the binary and libraries, whose share at start varies from run to run
/// by a megabyte or two (what the page cache holds, which copy of the binary is newest).
pub fn anon_rss_bytes(pid: u32) -> Option<u64> {
    status_field(pid, "RssAnon:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kb_field(&status, field)
}

fn parse_kb_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU seconds (`utime + stime` of `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// User + system CPU seconds of `pid`'s threads named `name` (the gateway's `voice`
/// thread, say), summed.
pub fn thread_cpu_seconds(pid: u32, name: &str) -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        let ticks = parse_cpu_ticks(&stat)?;
        *total.get_or_insert(0.0) += ticks as f64 / clock_ticks_per_second();
    }
    total
}

/// Our own CPU seconds.
pub fn self_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after the last ')' start at 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard one (children inherit it).
pub fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
        && limit.rlim_cur < limit.rlim_max
    {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tx\nVmRSS:\t  2048 kB\nRssAnon:\t  1024 kB\nVmSwap: 0 kB\n";
        assert_eq!(parse_kb_field(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(parse_kb_field(status, "RssAnon:"), Some(1024 * 1024));
        let stat = "123 (a b) c) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(100));
        assert!(rss_bytes(std::process::id()).is_some_and(|r| r > 0));
        assert!(anon_rss_bytes(std::process::id()).is_some_and(|r| r > 0));
        assert!(self_cpu_seconds().is_some());
    }
}
