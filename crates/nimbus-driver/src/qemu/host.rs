//! Host plumbing the driver needs around QEMU: processes found through /proc, external commands, flock,
//! and the private network namespace with its bridge.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

/// What /proc says about a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub state: char,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Clock ticks since boot at which the process started: with the pid, it names a process uniquely
    /// (pids are reused, start times are not).
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers from proc(5), minus 3 because `rest` starts at field 3 (state).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        utime_ticks: fields.get(11)?.parse().ok()?,
        stime_ticks: fields.get(12)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// True while the process that started at `start_time` exists and is not a zombie.
pub fn alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

pub fn rss_bytes(pid: i32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; callers checked that `pid` is still the process
    // they mean (pid + start time) just before.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Polls until the process is gone or `within` runs out. Returns whether it is gone.
pub async fn wait_exit(pid: i32, start_time: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !alive(pid, start_time) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds an executable in PATH (or checks an explicit path).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|c| c.is_file()))
        .unwrap_or(None)
}

/// Runs a command to completion; `Err` carries its stderr so that operation failures say what went wrong.
pub async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// An exclusive flock, held until dropped. It serializes actions on one instance across threads, drivers
/// and processes (flock locks belong to the open file, so two opens in one process exclude each other).
pub struct FileLock(#[allow(dead_code)] File);

pub async fn lock_file(path: PathBuf) -> std::io::Result<FileLock> {
    tokio::task::spawn_blocking(move || {
        let f = File::options().create(true).truncate(false).write(true).open(&path)?;
        // SAFETY: the fd is valid for the lifetime of `f`.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock(f))
    })
    .await
    .map_err(std::io::Error::other)?
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

pub fn disk_gb(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return 0 };
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return 0;
        }
        (s.f_blocks as u64 * s.f_frsize as u64) >> 30
    }
}

/// The network namespace the driver owns: a bridge holding the gateway address and, while instances run,
/// one tap per instance. Nothing connects it to the host's namespace, so guest traffic cannot leave it.
#[derive(Debug, Clone)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub async fn ensure(name: &str, bridge: &str, cidr: &str) -> Result<NetNs, String> {
        let ns = NetNs { name: name.to_string() };
        if !Path::new("/run/netns").join(name).exists() {
            if let Err(e) = run("ip", &["netns", "add", name]).await {
                if !e.contains("File exists") {
                    return Err(e);
                }
            }
        }
        ns.ip(&["link", "set", "lo", "up"]).await?;
        if ns.ip(&["link", "show", bridge]).await.is_err() {
            ns.ip(&["link", "add", bridge, "type", "bridge"]).await?;
        }
        ns.ip(&["addr", "replace", cidr, "dev", bridge]).await?;
        ns.ip(&["link", "set", bridge, "up"]).await?;
        Ok(ns)
    }

    pub async fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full).await
    }

    pub async fn delete_link(&self, name: &str) {
        let _ = self.ip(&["link", "del", name]).await;
    }

    /// (rx, tx) byte counters of a link, as seen from the namespace.
    pub async fn link_bytes(&self, name: &str) -> Option<(u64, u64)> {
        let out = self.ip(&["-s", "-j", "link", "show", "dev", name]).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let stats = v.get(0)?.get("stats64")?;
        Some((stats["rx"]["bytes"].as_u64()?, stats["tx"]["bytes"].as_u64()?))
    }

    pub async fn delete(&self) -> Result<(), String> {
        match run("ip", &["netns", "del", &self.name]).await {
            Err(e) if !e.contains("No such file") => Err(e),
            _ => Ok(()),
        }
    }
}

impl NetNs {
    /// A TCP connection to `address:port` made from inside the namespace. The socket is created by a thread
    /// of its own that enters the namespace (setns affects only the calling thread) and then ends: a pool
    /// thread must never be left in another namespace, since processes it spawns would inherit it.
    pub async fn connect(&self, address: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
        let ip: std::net::IpAddr = address.parse().map_err(|_| format!("{address:?} is not an IP address"))?;
        let path = Path::new("/run/netns").join(&self.name);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = (|| -> Result<std::net::TcpStream, String> {
                let ns = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                // SAFETY: a valid fd of a network namespace file; only this short-lived thread moves.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("setns: {}", std::io::Error::last_os_error()));
                }
                let s = std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(s)
            })();
            let _ = tx.send(result);
        });
        let std_stream = rx.await.map_err(|_| "the connecting thread died".to_string())??;
        tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
    }
}
