//! What the benchmark reads from Linux: a process tree's CPU time and peak memory
//! (`/proc/<pid>/stat`, `/proc/<pid>/status`), the machine's CPU time by state including
//! hypervisor steal (`/proc/stat`), TCP connections opened (`/proc/net/snmp`), a process's
//! open files, threads and established connections (`/proc/<pid>/fd`, `/proc/net/tcp`), CPU
//! pinning (`sched_setaffinity`) and a description of the machine.

use std::path::Path;
use std::time::Duration;

use cutover_tests::{parse_status_kib, status_kib};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Clock ticks per second assumed when `getconf CLK_TCK` cannot be run (Linux's value).
const ASSUMED_CLK_TCK: u64 = 100;

/// Clock ticks per second from `getconf CLK_TCK`, else 100; and which it was.
pub fn clk_tck() -> (u64, String) {
    let probed = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&t| t > 0);
    match probed {
        Some(t) => (t, "from `getconf CLK_TCK`".to_string()),
        None => (
            ASSUMED_CLK_TCK,
            "assumed: `getconf CLK_TCK` unavailable".to_string(),
        ),
    }
}

/// The fields after the command name of a `/proc/<pid>/stat` line (field 3 first).
fn stat_fields(stat: &str) -> Result<Vec<&str>, String> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let close = stat
        .rfind(')')
        .ok_or_else(|| format!("no ')' in /proc stat line {stat:?}"))?;
    Ok(stat[close + 1..].split_whitespace().collect())
}

fn stat_field(stat: &str, n: usize) -> Result<u64, String> {
    let fields = stat_fields(stat)?;
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    fields
        .get(n - 3)
        .ok_or_else(|| format!("/proc stat line has no field {n}: {stat:?}"))?
        .parse::<u64>()
        .map_err(|e| format!("/proc stat field {n} is not a number ({e}): {stat:?}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
pub fn parse_cpu_ticks(stat: &str) -> Result<u64, String> {
    Ok(stat_field(stat, 14)? + stat_field(stat, 15)?)
}

/// CPU time (utime + stime) of process `pid` so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_cpu_ticks(&stat)
}

/// Summed CPU time of `pids`, in clock ticks; processes that are gone count 0.
pub fn cpu_ticks_of(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).sum()
}

/// `pid` and all its descendants (by the parent pid in `/proc/*/stat`), `pid` first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let ppid = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| stat_field(&s, 4).ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid as u32));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Peak resident set size (`VmHWM`) summed over `pids`, in KiB; `None` if none could be read.
pub fn peak_rss_kib(pids: &[u32]) -> Option<u64> {
    let values: Vec<u64> = pids
        .iter()
        .filter_map(|&p| status_kib(p, "VmHWM"))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Sets each process's peak resident set size (`VmHWM`) to its current one (`5` written to
/// `/proc/<pid>/clear_refs`, Linux 4.0+), so that a later [`peak_rss_kib`] is the peak of what
/// ran in between. Whether every process took it.
pub fn reset_peak_rss(pids: &[u32]) -> bool {
    !pids.is_empty()
        && pids
            .iter()
            .all(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

/// Current resident set size (`VmRSS`) summed over `pids`, in KiB.
pub fn rss_kib(pids: &[u32]) -> Option<u64> {
    let values: Vec<u64> = pids
        .iter()
        .filter_map(|&p| status_kib(p, "VmRSS"))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Threads of process `pid` (`Threads:` of `/proc/<pid>/status`).
pub fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Open file descriptors of process `pid` (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// The socket inodes among process `pid`'s open files (`socket:[N]` links in `/proc/<pid>/fd`).
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// TCP connections process `pid` holds in state ESTABLISHED to a remote port in `ports`
/// (its sockets in `/proc/net/tcp` and `/proc/net/tcp6`): e.g. its pooled upstream connections.
pub fn established_to(pid: u32, ports: &[u16]) -> Option<u64> {
    let inodes = socket_inodes(pid);
    let mut n = 0;
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            read_any = true;
            n += count_established(&text, &inodes, ports);
        }
    }
    read_any.then_some(n)
}

/// Rows of a `/proc/net/tcp` table in state `01` (ESTABLISHED) whose inode is in `inodes`
/// and whose remote port is in `ports`.
fn count_established(table: &str, inodes: &std::collections::HashSet<u64>, ports: &[u16]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
            let (Some(remote), Some(state), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                return false;
            };
            let port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            *state == "01"
                && port.is_some_and(|p| ports.contains(&p))
                && inode.parse().is_ok_and(|i: u64| inodes.contains(&i))
        })
        .count() as u64
}

/// The machine's CPU time by state (`/proc/stat` `cpu` line), in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system (guest time is inside user): time charged to processes.
    pub busy: u64,
    /// irq + softirq: interrupt work (loopback packet processing among it), which the kernel
    /// charges to no process.
    pub irq: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Time the hypervisor ran something else while this machine wanted to run.
    pub steal: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat`.
    pub fn now() -> Result<CpuTimes, String> {
        let text = std::fs::read_to_string("/proc/stat")
            .map_err(|e| format!("reading /proc/stat: {e}"))?;
        parse_proc_stat(&text)
    }

    pub fn total(&self) -> u64 {
        self.busy + self.irq + self.idle + self.steal
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            busy: self.busy.saturating_sub(earlier.busy),
            irq: self.irq.saturating_sub(earlier.irq),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

fn parse_proc_stat(text: &str) -> Result<CpuTimes, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat has no `cpu` line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().map_err(|e| format!("/proc/stat `cpu` line: {e}")))
        .collect::<Result<_, _>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal guest guest_nice
    Ok(CpuTimes {
        busy: at(0) + at(1) + at(2),
        irq: at(5) + at(6),
        idle: at(3) + at(4),
        steal: at(7),
    })
}

/// `Tcp: ActiveOpens` of `/proc/net/snmp`: TCP connections this machine opened so far.
pub fn tcp_active_opens() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/net/snmp")
        .map_err(|e| format!("reading /proc/net/snmp: {e}"))?;
    parse_active_opens(&text)
}

fn parse_active_opens(text: &str) -> Result<u64, String> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        return Err("/proc/net/snmp has no Tcp lines".into());
    };
    let i = names
        .split_whitespace()
        .position(|n| n == "ActiveOpens")
        .ok_or("/proc/net/snmp: no ActiveOpens")?;
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "/proc/net/snmp: bad ActiveOpens value".to_string())
}

/// Pins the calling thread (and so every thread it starts later) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pin to cpu {cpu}: {e}"))
}

/// Pins every thread of every process in `pids` to `cpu` (threads they start later inherit it).
pub fn pin_processes(pids: &[u32], cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    set_affinity(pids, &set)
}

/// Lets every thread of every process in `pids` run on CPUs `0..cpus` again.
pub fn unpin_processes(pids: &[u32], cpus: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    for cpu in 0..cpus.min(CpuSet::count()) {
        set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    }
    set_affinity(pids, &set)
}

fn set_affinity(pids: &[u32], set: &CpuSet) -> Result<(), String> {
    for &pid in pids {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("listing threads of {pid}: {e}"))?;
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            sched_setaffinity(Pid::from_raw(tid), set)
                .map_err(|e| format!("set the CPUs of thread {tid} of {pid}: {e}"))?;
        }
    }
    Ok(())
}

/// The machine the numbers were taken on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Online CPUs (`/proc/cpuinfo` processors, independent of this process's affinity).
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1);
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| parse_status_kib(&m, "MemTotal"))
            .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
        Machine {
            cpus,
            cpu_model,
            kernel,
            memory_gib,
        }
    }
}

/// The first line `program ARGS` prints (stdout or stderr), e.g. a version; `None` when it
/// cannot be run.
pub fn first_line_of(program: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// `name` on `$PATH`, else in `/usr/sbin` and `/sbin` (where Debian puts nginx and haproxy,
/// which are not on an ordinary user's PATH), else next to this binary (hyper-floor), or — from
/// a test binary in `target/<profile>/deps` — next to the crate's own binaries one level up.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Next to cutover-bench itself: binaries of the same build (hyper-floor).
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf));
    let above_deps = own_dir
        .as_deref()
        .filter(|d| d.ends_with("deps"))
        .and_then(|d| d.parent().map(std::path::Path::to_path_buf));
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .chain(own_dir)
        .chain(above_deps)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Ticks → ms.
pub fn ticks_to_ms(ticks: u64, clk_tck: u64) -> f64 {
    ticks as f64 * 1000.0 / clk_tck.max(1) as f64
}

/// Ticks over a wall-clock span → cores used (1.0 = one CPU fully busy).
pub fn cores(ticks: u64, clk_tck: u64, wall: Duration) -> f64 {
    ticks_to_ms(ticks, clk_tck) / 1000.0 / wall.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_plus_stime() {
        let line = "4242 (cutover (x) y) S 1 4242 4242 0 -1 4194560 3187 0 0 0 157 43 0 0 20 0 6 0 123456 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 17662 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_cpu_ticks(line), Ok(200));
        assert_eq!(stat_field(line, 4), Ok(1));
        assert!(parse_cpu_ticks("garbage").is_err());
        assert!(parse_cpu_ticks("1 (x) S 1 2").is_err());
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        assert!(peak_rss_kib(&[pid]).is_some_and(|k| k > 0));
        assert!(rss_kib(&[pid]).is_some_and(|k| k > 0));
        assert_eq!(process_tree(pid)[0], pid);
    }

    #[test]
    fn a_reset_peak_forgets_what_was_freed_before_it() {
        let pid = std::process::id();
        // 256 MiB touched and freed: the system allocator maps a block this large on its own
        // and unmaps it when it is freed, so the peak stays above the current RSS.
        let block = vec![1u8; 256 << 20];
        assert_eq!(
            block
                .iter()
                .step_by(4096)
                .map(|&b| u64::from(b))
                .sum::<u64>(),
            65_536
        );
        drop(block);
        let before = peak_rss_kib(&[pid]).expect("VmHWM");
        assert!(
            reset_peak_rss(&[pid]),
            "clear_refs takes 5 for our own process"
        );
        let after = peak_rss_kib(&[pid]).expect("VmHWM");
        assert!(
            after + (200 << 10) < before,
            "the 256 MiB peak is forgotten: {before} KiB before the reset, {after} KiB after"
        );
        assert!(!reset_peak_rss(&[]), "no process, nothing reset");
    }

    #[test]
    fn parses_proc_stat_and_snmp() {
        let stat = "cpu  100 2 30 400 5 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = parse_proc_stat(stat).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 132,
                irq: 13,
                idle: 405,
                steal: 8
            }
        );
        assert_eq!(t.total(), 558);
        let snmp = "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens\nTcp: 1 200 120000 -1 54843 47880\n";
        assert_eq!(parse_active_opens(snmp), Ok(54843));
        assert!(CpuTimes::now().is_ok());
        assert!(tcp_active_opens().is_ok());
    }

    #[test]
    fn counts_established_sockets_by_inode_and_remote_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1
   1: 0100007F:A1B3 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1
   2: 0100007F:A1B4 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1
   3: 0100007F:A1B5 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 555 1 0 20 4 30 10 -1
";
        // 0x1F90 = 8080: rows 0 and 1 are ours and established; 2 is TIME_WAIT, 3 goes to
        // another port, 4 is not our socket.
        let inodes = [111, 222, 333, 444].into_iter().collect();
        assert_eq!(count_established(table, &inodes, &[8080]), 2);
        assert_eq!(count_established(table, &inodes, &[8080, 8081]), 3);
        assert_eq!(count_established(table, &inodes, &[9999]), 0);
    }

    #[test]
    fn reads_own_files_threads_and_connections() {
        let pid = std::process::id();
        assert!(open_fds(pid).is_some_and(|n| n >= 1));
        assert!(threads(pid).is_some_and(|n| n >= 1));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let before = established_to(pid, &[port]).unwrap();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        assert_eq!(established_to(pid, &[port]), Some(before + 1));
    }

    #[test]
    fn finds_programs_next_to_its_own_binary() {
        // The test binary is not on PATH; its siblings are found the way cutover-bench finds
        // hyper-floor.
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(find_program(name), Some(exe.clone()));
        assert_eq!(find_program("no-such-program-anywhere"), None);
    }
}
