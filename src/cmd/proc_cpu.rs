//! CPU time from Linux's `/proc`, for the load generators: the machine's
//! busy share, this process's share, and the CPU time of the server
//! processes under test. Counters are in clock ticks; shares and per-request
//! figures are computed so that the kernel's tick rate need not be known.

use std::time::Duration;

/// utime + stime of a process, from its `/proc/PID/stat` line. The command
/// name (field 2) is in parentheses and may hold spaces: count fields after
/// the last ')'. utime and stime are fields 14 and 15.
pub(crate) fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// utime + stime of `pid` (a number, or `self`), in clock ticks.
pub(crate) fn ticks_of(pid: &str) -> Option<u64> {
    process_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of every process in `pids`, summed; `None` without any
/// pid, or when one of them cannot be read (a process that exited has lost
/// its count, so a sum without it would be wrong, not smaller).
pub(crate) fn processes_ticks(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| ticks_of(&p.to_string())).sum()
}

/// CPU time counters from `/proc` in clock ticks: the machine's total and
/// idle time over all cores, this process's user+system time, and that of
/// the server processes asked for (`None` without any, or when one of them
/// cannot be read: a server that exited has lost its count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuSample {
    total: u64,
    idle: u64,
    own: u64,
    /// Cores counted in `total` (the `cpuN` lines).
    cores: u32,
    servers: Option<u64>,
}

impl CpuSample {
    pub(crate) fn read(servers: &[u32]) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut s = Self::parse(&stat, &own)?;
        s.servers = processes_ticks(servers);
        Some(s)
    }

    fn parse(proc_stat: &str, self_stat: &str) -> Option<Self> {
        let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]:
        // guest time is already counted in user, so only the first 8 add up.
        if v.len() < 5 {
            return None;
        }
        let total = v.iter().take(8).sum();
        let idle = v[3] + v[4];
        let cores = proc_stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        Some(Self {
            total,
            idle,
            own: process_ticks(self_stat)?,
            cores: u32::try_from(cores).ok().filter(|&c| c > 0)?,
            servers: None,
        })
    }

    /// The servers' CPU time per request in microseconds, between `earlier`
    /// and `self`, `elapsed` apart. `/proc/stat` counts every core's ticks,
    /// so the tick length is `elapsed × cores / total ticks`: no need to
    /// know the kernel's tick rate.
    pub(crate) fn servers_per_request(
        &self,
        earlier: &Self,
        elapsed: Duration,
        requests: u64,
    ) -> Option<f64> {
        let servers = self.servers?.checked_sub(earlier.servers?)?;
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 || requests == 0 {
            return None;
        }
        let tick_us = elapsed.as_secs_f64() * 1e6 * f64::from(self.cores) / total as f64;
        Some(servers as f64 * tick_us / requests as f64)
    }

    /// (machine busy %, this process %) between `earlier` and `self`. Both
    /// counters are in the same ticks, so the shares need no tick rate.
    pub(crate) fn since(&self, earlier: &Self) -> (Option<f64>, Option<f64>) {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return (None, None);
        }
        let idle = self.idle.saturating_sub(earlier.idle);
        let own = self.own.saturating_sub(earlier.own);
        let share = |x: u64| Some(100.0 * x as f64 / total as f64);
        (share(total.saturating_sub(idle)), share(own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "cpu  100 5 50 800 20 1 2 3 7 0\ncpu0 50 2 25 400 10 0 1 1 0 0\n";
    const SELF_STAT: &str =
        "4242 (tessera bench) S 1 4242 4242 0 -1 4194560 100 0 0 0 30 12 0 0 20 0 9 0 1 2 3";

    #[test]
    fn cpu_sample_parses_proc() {
        let s = CpuSample::parse(PROC_STAT, SELF_STAT).unwrap();
        assert_eq!(
            s,
            CpuSample {
                total: 100 + 5 + 50 + 800 + 20 + 1 + 2 + 3,
                idle: 820,
                own: 42,
                cores: 1,
                servers: None,
            }
        );
        assert!(CpuSample::parse("intr 1 2", SELF_STAT).is_none());
        assert!(CpuSample::parse(PROC_STAT, "4242 (x) S 1").is_none());
        assert!(CpuSample::parse("cpu  a b c d e", SELF_STAT).is_none());
    }

    #[test]
    fn cpu_shares_are_relative_to_all_cores() {
        let a = CpuSample {
            total: 1000,
            idle: 800,
            own: 10,
            cores: 2,
            servers: None,
        };
        let b = CpuSample {
            total: 1200,
            idle: 850,
            own: 60,
            cores: 2,
            servers: None,
        };
        assert_eq!(b.since(&a), (Some(75.0), Some(25.0)));
        assert_eq!(a.since(&a), (None, None));
    }

    #[test]
    fn server_cpu_per_request_needs_no_tick_rate() {
        // Two cores, 1 s apart: 200 ticks in all, so a tick is 10 ms. The
        // servers used 50 ticks (0.5 s) for 1,000 requests: 500 µs each.
        let a = CpuSample {
            total: 1000,
            idle: 800,
            own: 10,
            cores: 2,
            servers: Some(100),
        };
        let b = CpuSample {
            total: 1200,
            idle: 850,
            own: 60,
            cores: 2,
            servers: Some(150),
        };
        let us = b
            .servers_per_request(&a, Duration::from_secs(1), 1000)
            .unwrap();
        assert!((us - 500.0).abs() < 1e-9, "{us}");
        assert_eq!(b.servers_per_request(&a, Duration::from_secs(1), 0), None);
        let lost = CpuSample { servers: None, ..b };
        assert_eq!(
            lost.servers_per_request(&a, Duration::from_secs(1), 1000),
            None
        );
        // A count that went backwards is a different process, not a figure.
        let restarted = CpuSample {
            servers: Some(3),
            ..b
        };
        assert_eq!(
            restarted.servers_per_request(&a, Duration::from_secs(1), 1000),
            None
        );
    }
}
