//! The memory limit of a run, and the processes of a run's process group.
//!
//! `EXECUTOR_TASK_MEMORY_LIMIT` is documented by DataHub in kilobytes (its old `ulimit -v`); a plain
//! number is read that way. Units are accepted as Kubernetes writes them: `Ki`/`Mi`/`Gi`/`Ti`
//! (binary, also `KiB`...), `K`/`M`/`G`/`T` and `KB`/`MB`/`GB`/`TB` (decimal), `B` for bytes.
//! The limit is enforced on the resident memory of the whole process group (the `datahub` CLI and
//! anything it starts), sampled by the job; `RLIMIT_AS` as DataHub uses it counts virtual memory,
//! which Python reserves far beyond its use, so it would kill healthy runs.

use std::fs;

/// Parses a memory limit into bytes. Errors say what is wrong with the text.
pub fn parse_memory_limit(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a number with an optional unit (e.g. 4194304, 4Gi, 512Mi)"))?;
    let factor: f64 = match unit.trim() {
        "" => 1024.0,
        "B" | "b" => 1.0,
        "Ki" | "KiB" | "kib" | "ki" => 1024.0,
        "Mi" | "MiB" | "mib" | "mi" => 1024.0 * 1024.0,
        "Gi" | "GiB" | "gib" | "gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" | "tib" | "ti" => 1024.0f64.powi(4),
        "k" | "K" | "KB" | "kB" | "kb" => 1e3,
        "M" | "MB" | "mb" | "m" => 1e6,
        "G" | "GB" | "gb" | "g" => 1e9,
        "T" | "TB" | "tb" | "t" => 1e12,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?} (use Ki, Mi, Gi, K, M, G or none for kilobytes)"
            ));
        }
    };
    let bytes = n * factor;
    if !bytes.is_finite() || bytes < 1024.0 * 1024.0 {
        return Err(format!("{text:?} is below 1 MiB, too small to run anything"));
    }
    Ok(bytes as u64)
}

/// Bytes as a short human text (`1.5 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[i]) }
}

/// The pids whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| process_group(*pid) == Some(pgid))
        .collect()
}

/// The resident memory of every process in group `pgid`, in bytes.
pub fn group_rss(pgid: i32) -> u64 {
    group_members(pgid).into_iter().filter_map(rss_bytes).sum()
}

fn process_group(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?; // ppid
    fields.next()?.parse().ok()
}

fn rss_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_kilobytes_and_units_are_accepted() {
        assert_eq!(parse_memory_limit("4194304"), Ok(4 * 1024 * 1024 * 1024));
        assert_eq!(parse_memory_limit("4Gi"), Ok(4 << 30));
        assert_eq!(parse_memory_limit("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_limit("2G"), Ok(2_000_000_000));
        assert_eq!(parse_memory_limit("1.5GiB"), Ok(3 << 29));
        assert!(parse_memory_limit("lots").expect_err("bad").contains("not a number"));
        assert!(parse_memory_limit("4Qi").expect_err("unit").contains("unknown unit"));
        assert!(parse_memory_limit("10").expect_err("tiny").contains("below 1 MiB"));
    }

    #[test]
    fn own_group_is_visible() {
        let me = std::process::id() as i32;
        let pgid = process_group(me).expect("own stat");
        assert!(group_members(pgid).contains(&me));
        assert!(group_rss(pgid) > 0);
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
