//! Runs one child process the way an ingestion must run: in its own process group, stdin fed once
//! and closed, stdout and stderr merged and read line by line (each line masked before anyone sees
//! it, invalid UTF-8 tolerated), with a wall-clock timeout, a memory limit on the whole group,
//! external stop requests (KILL, SIGTERM), SIGTERM → grace → SIGKILL to the group, and no process of
//! the group left behind when it returns.

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::masking::Masker;
use crate::memory::group_rss;

/// Bytes of one line kept for masking; the rest of a longer line is dropped (it would be cut to
/// [`crate::report::MAX_LINE_CHARS`] anyway).
const MAX_LINE_BYTES: usize = 1 << 20;
/// How long output is still read after the child exited (grandchildren may hold the pipe).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Why a run was stopped before it ended by itself.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// A `KILL` signal from DataHub.
    Killed,
    /// The job itself got SIGTERM/SIGINT (the platform stops it).
    Terminated,
    /// The wall-clock timeout passed.
    TimedOut(Duration),
    /// The group's resident memory went over the limit.
    OutOfMemory { used: u64, limit: u64 },
}

/// The child to run.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The child's whole environment.
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub cwd: Option<PathBuf>,
}

/// Limits of a run.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: Option<u64>,
    pub grace: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The exit code, when the child exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended the child, if any.
    pub signal: Option<i32>,
    /// Set when the runner stopped the child.
    pub stop: Option<StopReason>,
    /// The highest resident memory of the group seen, in bytes.
    pub peak_rss: u64,
}

/// Runs `cmd`; its masked output goes to `on_output` in blocks of whole lines (each ending in a
/// newline; a last line without one gets one). Masking a block at a time is one pass of the
/// automaton over up to 64 KiB, and catches multi-line values whole.
pub async fn run(
    cmd: ChildCommand,
    limits: &Limits,
    masker: &Masker,
    mut stop_rx: watch::Receiver<Option<StopReason>>,
    on_output: &mut (dyn FnMut(&str) + Send),
) -> std::io::Result<Outcome> {
    let (reader, writer) = std::io::pipe()?;
    let writer_err = writer.try_clone()?;
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_err))
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &cmd.cwd {
        command.current_dir(dir);
    }
    let mut child = command.spawn()?;
    let spawned = Instant::now();
    // The command holds our copies of the pipe's write end: drop them so EOF can be seen.
    drop(command);
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    if let Some(mut stdin) = child.stdin.take() {
        let input = cmd.stdin;
        tokio::spawn(async move {
            // A child that exits before reading its input is reported by its exit code.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;

    let mut lines = LineSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    let mut exit: Option<std::process::ExitStatus> = None;
    let mut stop: Option<StopReason> = stop_rx.borrow().clone();
    let deadline = Instant::now() + limits.timeout;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut kill_at = far;
    let mut drain_until = far;
    let mut peak = 0u64;
    let sample_every = if limits.memory_bytes.is_some() { Duration::from_millis(250) } else { Duration::from_secs(1) };
    let mut sampler = tokio::time::interval(sample_every);
    if stop.is_some() {
        signal_group(pgid, Signal::SIGTERM);
        kill_at = Instant::now() + limits.grace;
    }

    loop {
        tokio::select! {
            n = rx.read(&mut buf), if !eof => {
                match n {
                    Ok(0) | Err(_) => {
                        eof = true;
                        if let Some(mut rest) = lines.finish() {
                            rest.push(b'\n');
                            on_output(&masker.mask_bytes_lossy(&rest));
                        }
                    }
                    Ok(n) => lines.feed(&buf[..n], &mut |block| on_output(&masker.mask_bytes_lossy(block))),
                }
            }
            status = child.wait(), if exit.is_none() => {
                exit = Some(status?);
                drain_until = Instant::now() + DRAIN_AFTER_EXIT;
            }
            _ = sleep_until(deadline), if stop.is_none() && exit.is_none() => {
                stop = Some(StopReason::TimedOut(limits.timeout));
                signal_group(pgid, Signal::SIGTERM);
                kill_at = Instant::now() + limits.grace;
            }
            changed = stop_rx.changed(), if stop.is_none() && exit.is_none() => {
                let requested = if changed.is_ok() { stop_rx.borrow().clone() } else { None };
                if let Some(reason) = requested {
                    stop = Some(reason);
                    signal_group(pgid, Signal::SIGTERM);
                    kill_at = Instant::now() + limits.grace;
                } else if changed.is_err() {
                    // The sender is gone: nobody can stop us any more; keep running.
                    stop_rx = watch::channel(None).1;
                }
            }
            _ = sampler.tick(), if exit.is_none() => {
                let rss = group_rss(pgid);
                peak = peak.max(rss);
                if let Some(limit) = limits.memory_bytes
                    && rss > limit
                    && !matches!(stop, Some(StopReason::OutOfMemory { .. }))
                {
                    stop = Some(StopReason::OutOfMemory { used: rss, limit });
                    signal_group(pgid, Signal::SIGKILL);
                }
            }
            _ = sleep_until(kill_at), if exit.is_none() && kill_at != far => {
                signal_group(pgid, Signal::SIGKILL);
                kill_at = far;
            }
            _ = sleep_until(drain_until), if exit.is_some() && !eof => {
                break;
            }
        }
        if exit.is_some() && eof {
            break;
        }
    }
    // Whatever the child left in its group goes with it.
    signal_group(pgid, Signal::SIGKILL);
    let status = exit.unwrap_or_default();
    tracing::info!(
        pid = pgid,
        exit_code = status.code(),
        signal = status.signal(),
        child_ms = spawned.elapsed().as_millis() as u64,
        peak_group_rss_kib = peak / 1024,
        "the child process ended"
    );
    Ok(Outcome { exit_code: status.code(), signal: status.signal(), stop, peak_rss: peak })
}

fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 0 {
        // ESRCH (the group is gone) is the outcome we want anyway.
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// Splits a byte stream into blocks of whole lines, keeping at most [`MAX_LINE_BYTES`] of a line
/// that spans reads.
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
    overflow: bool,
}

impl LineSplitter {
    /// Emits every whole line of `data` (with the partial line before it) in at most two blocks.
    fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        let Some(last) = data.iter().rposition(|b| *b == b'\n') else {
            self.push(data);
            return;
        };
        let (mut complete, rest) = data.split_at(last + 1);
        if !self.partial.is_empty() || self.overflow {
            let first = complete.iter().position(|b| *b == b'\n').unwrap_or(complete.len() - 1);
            self.push(&complete[..first]);
            let mut line = std::mem::take(&mut self.partial);
            line.push(b'\n');
            emit(&line);
            self.overflow = false;
            complete = &complete[first + 1..];
        }
        if !complete.is_empty() {
            emit(complete);
        }
        self.push(rest);
    }

    fn push(&mut self, data: &[u8]) {
        if self.overflow {
            return;
        }
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        if data.len() > room {
            self.partial.extend_from_slice(&data[..room]);
            self.overflow = true;
        } else {
            self.partial.extend_from_slice(data);
        }
    }

    fn finish(&mut self) -> Option<Vec<u8>> {
        if self.partial.is_empty() { None } else { Some(std::mem::take(&mut self.partial)) }
    }
}

/// The name of a signal number (`SIGKILL`), or the number.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map(|s| s.as_str().to_owned()).unwrap_or_else(|_| sig.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ChildCommand {
        ChildCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: b"secret-input\n".to_vec(),
            cwd: None,
        }
    }

    fn limits(timeout: f64) -> Limits {
        Limits { timeout: Duration::from_secs_f64(timeout), memory_bytes: None, grace: Duration::from_secs(2) }
    }

    #[tokio::test]
    async fn streams_masked_lines_and_exit_code() {
        let masker = Masker::new([("S", "secret-input")]);
        let (_tx, rx) = watch::channel(None);
        let mut text = String::new();
        let out = run(
            sh("cat; printf 'bad \\377 byte\\n'; echo err >&2; printf 'no newline'; exit 3"),
            &limits(30.0),
            &masker,
            rx,
            &mut |t| text.push_str(t),
        )
        .await
        .expect("runs");
        assert_eq!(out.exit_code, Some(3));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, vec!["***REDACTED:S***", "bad \u{fffd} byte", "err", "no newline"]);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let (_tx, rx) = watch::channel(None);
        let mut text = String::new();
        let out =
            run(sh("sleep 30 & echo started; trap '' TERM; wait"), &limits(0.5), &Masker::default(), rx, &mut |t| {
                text.push_str(t)
            })
            .await
            .expect("runs");
        assert_eq!(out.stop, Some(StopReason::TimedOut(Duration::from_secs_f64(0.5))));
        assert_eq!(text, "started\n");
    }

    #[tokio::test]
    async fn stop_request_terminates() {
        let (tx, rx) = watch::channel(None);
        let mut text = String::new();
        let (lim, masker) = (limits(30.0), Masker::default());
        let mut push = |t: &str| text.push_str(t);
        let task = run(sh("echo ready; exec sleep 30"), &lim, &masker, rx, &mut push);
        let stopper = async {
            tx.send(Some(StopReason::Killed)).expect("send");
        };
        let (out, ()) = tokio::join!(task, stopper);
        let out = out.expect("runs");
        assert_eq!(out.stop, Some(StopReason::Killed));
        assert_eq!(out.signal, Some(15));
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        let big = vec![b'x'; MAX_LINE_BYTES + 10];
        s.feed(&big, &mut |l| got.push(l.to_vec()));
        s.feed(b"\nshort\r\nand more\npart", &mut |l| got.push(l.to_vec()));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE_BYTES + 1);
        assert_eq!(got[1], b"short\r\nand more\n");
        assert_eq!(s.finish(), Some(b"part".to_vec()));
    }
}
