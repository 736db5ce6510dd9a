//! What server processes cost, read from `/proc`: CPU time, resident
//! memory, open file descriptors and threads, one process or summed over
//! several. Reading only: what the figures should be is for the test or
//! the benchmark that reads them.

use std::collections::BTreeMap;
use std::io;

/// One reading of one process, or a sum over several.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU time so far, in seconds.
    pub cpu_s: f64,
    /// Resident set size (VmRSS), in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
    pub threads: u64,
}

impl Sample {
    fn add(self, other: Sample) -> Sample {
        Sample {
            cpu_s: self.cpu_s + other.cpu_s,
            rss_bytes: self.rss_bytes + other.rss_bytes,
            fds: self.fds + other.fds,
            threads: self.threads + other.threads,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu_s": self.cpu_s, "rss_bytes": self.rss_bytes,
            "fds": self.fds, "threads": self.threads,
        })
    }

    pub fn line(&self) -> String {
        format!(
            "RSS {}  fds {}  threads {}  CPU {:.2} s",
            mib(self.rss_bytes),
            self.fds,
            self.threads,
            self.cpu_s
        )
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Reads one process.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces:
    // the fields after the last ')' start at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| bad(pid, "stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<f64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| bad(pid, "stat"))
    };
    // Fields 14 and 15: utime and stime, in clock ticks.
    let cpu_s = (field(14)? + field(15)?) / clock_ticks();

    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let value = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let rss_bytes = value("VmRSS:").ok_or_else(|| bad(pid, "status"))? * 1024;
    let threads = value("Threads:").ok_or_else(|| bad(pid, "status"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Sample {
        cpu_s,
        rss_bytes,
        fds,
        threads,
    })
}

fn bad(pid: u32, file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse /proc/{pid}/{file}"),
    )
}

/// Open descriptors of `pids` by kind: `socket`, `pipe`, `anon_inode:…`,
/// or the file's name (without its directory), with how many of each.
pub fn fd_kinds(pids: &[u32]) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let kind = if link.starts_with("socket:") {
                "socket".to_owned()
            } else if link.starts_with("pipe:") {
                "pipe".to_owned()
            } else if link.starts_with("anon_inode:") {
                link.into_owned()
            } else {
                link.rsplit('/').next().unwrap_or_default().to_owned()
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
}

/// What `after` has more of than `before`, e.g. "+12 chat.db".
pub fn fd_growth(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter_map(|(kind, &n)| {
            let was = before.get(kind).copied().unwrap_or(0);
            (n > was).then(|| format!("+{} {kind}", n - was))
        })
        .collect()
}

/// The sum over `pids`; `None` without pids. A process that cannot be read
/// (it exited) is reported on stderr and makes the reading `None`.
pub fn sample_all(pids: &[u32]) -> Option<Sample> {
    if pids.is_empty() {
        return None;
    }
    let mut total = Sample::default();
    for &pid in pids {
        match sample(pid) {
            Ok(s) => total = total.add(s),
            Err(e) => {
                eprintln!("cannot read server process {pid}: {e}");
                return None;
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let s = super::sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.fds > 0 && s.threads > 0, "{s:?}");
        assert!(s.cpu_s >= 0.0);
    }
}
