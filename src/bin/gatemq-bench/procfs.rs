//! What the bench reads about a process from /proc: CPU time, RSS, context switches.

use std::fs;
use std::io;

/// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`, 100 on Linux).
pub fn clk_tck() -> f64 {
    extern "C" {
        fn sysconf(name: std::ffi::c_int) -> std::ffi::c_long;
    }
    const SC_CLK_TCK: std::ffi::c_int = 2;
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { sysconf(SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// utime + stime of a whole process (every thread, live or exited), in seconds. `pid` is a
/// number or "self".
pub fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("bad /proc stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| -> io::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("bad /proc stat"))
    };
    Ok((tick(11)? + tick(12)?) as f64 / clk_tck())
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// VmRSS in kB.
pub fn rss_kb(pid: &str) -> io::Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_field(&s, "VmRSS").ok_or_else(|| io::Error::other("no VmRSS"))
}

/// RssAnon in kB: the process's own memory, without the mapped files (its binary, libc).
pub fn rss_anon_kb(pid: &str) -> io::Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_field(&s, "RssAnon").ok_or_else(|| io::Error::other("no RssAnon"))
}

/// Voluntary + nonvoluntary context switches, summed over the process's threads.
pub fn context_switches(pid: &str) -> io::Result<u64> {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(s) = fs::read_to_string(t?.path().join("status")) else {
            continue; // a thread that just exited
        };
        total += status_field(&s, "voluntary_ctxt_switches").unwrap_or(0)
            + status_field(&s, "nonvoluntary_ctxt_switches").unwrap_or(0);
    }
    Ok(total)
}

/// CPU-seconds every process on the machine has used since boot (/proc/stat: all but idle
/// and iowait).
pub fn system_busy_seconds() -> io::Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("bad /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Ok(busy as f64 / clk_tck())
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// File descriptors this process has open now.
pub fn open_files() -> u64 {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_self() {
        assert!(cpu_seconds("self").unwrap() >= 0.0);
        assert!(rss_kb("self").unwrap() > 0);
        assert!(rss_anon_kb("self").unwrap() > 0);
        assert!(context_switches("self").unwrap() > 0);
        assert!(open_files_limit().unwrap() > 0);
        assert!(system_busy_seconds().unwrap() > 0.0);
    }
}
