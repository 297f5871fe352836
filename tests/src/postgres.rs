//! `Postgres`: a throw-away PostgreSQL server for tests.
//!
//! `initdb` into a temporary directory, then `postgres` listening on `127.0.0.1:<free port>` with
//! its unix socket in the same directory. TCP logins need a password (`scram-sha-256`), socket
//! logins are trusted (that is how [`Postgres::psql`] connects as the superuser `postgres`).
//! The server is stopped (fast shutdown, then kill) and the directory removed on drop.
//!
//! Binaries come from `$DATAHUB_TEST_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
//! PostgreSQL refuses to run as root: when the effective uid is 0 the server runs as the `postgres`
//! OS user (created by Debian's `postgresql` package).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown, geteuid};
use tempfile::TempDir;

/// Environment variable naming the directory holding `initdb`, `postgres`, `psql`, `pg_isready`.
pub const PG_BIN_ENV: &str = "DATAHUB_TEST_PG_BIN";
/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";

const READY_DEADLINE: Duration = Duration::from_secs(30);
const READY_INTERVAL: Duration = Duration::from_millis(50);
const STOP_DEADLINE: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;

/// A running throw-away PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    log: PathBuf,
    // Dropped last (after `Drop::drop` stopped the server): removes data, socket and log.
    dir: TempDir,
}

/// The OS user to run the server as (only when we are root).
struct RunAs {
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// Creates a cluster and starts the server; waits (at most 30 s) until it accepts connections.
    pub fn start() -> Result<Postgres, String> {
        let bin = bin_dir()?;
        let run_as = if geteuid().is_root() {
            let user = User::from_name(SUPERUSER)
                .map_err(|e| format!("looking up the `{SUPERUSER}` OS user: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "running as root, and PostgreSQL refuses to: the `{SUPERUSER}` OS user is \
                         needed (install Debian's postgresql package)"
                    )
                })?;
            Some(RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
        } else {
            None
        };

        let dir = tempfile::Builder::new()
            .prefix("pg-test-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        if let Some(user) = &run_as {
            make_parents_traversable(dir.path())?;
            chown(dir.path(), Some(nix::unistd::Uid::from_raw(user.uid)), Some(nix::unistd::Gid::from_raw(user.gid)))
                .map_err(|e| format!("chown {} to {SUPERUSER}: {e}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .current_dir(dir.path());
        as_user(&mut initdb, run_as.as_ref());
        let out = initdb.output().map_err(|e| format!("running {}: {e}", bin.join("initdb").display()))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        let mut pg = Postgres { child: None, port: 0, bin, log, dir };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match pg.spawn_server(&data, run_as.as_ref()) {
                Ok(()) => return Ok(pg),
                // Another process may have taken the port between our probe and the bind.
                Err(e) if e.contains("could not bind") || e.contains("already in use") => {
                    last_error = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    fn spawn_server(&mut self, data: &Path, run_as: Option<&RunAs>) -> Result<(), String> {
        self.port = free_port()?;
        let log = File::create(&self.log).map_err(|e| format!("creating {}: {e}", self.log.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("duplicating the log handle: {e}"))?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "password_encryption=scram-sha-256",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        as_user(&mut cmd, run_as);
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", self.bin.join("postgres").display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("postgres exited during start-up ({status}): {}", self.log_text()));
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", "postgres"])
                .args(["-t", "1"])
                .stdin(Stdio::null())
                .status()
                .map_err(|e| format!("running pg_isready: {e}"))?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("postgres was not ready within {READY_DEADLINE:?}: {}", self.log_text()));
            }
            std::thread::sleep(READY_INTERVAL);
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as recipes' `host_port` wants it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Runs an SQL script (several statements allowed, stops at the first error) in `db` as the
    /// superuser, over the unix socket. Returns psql's unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.psql_command(db);
        cmd.args(["-h"]).arg(self.dir.path()).args(["-U", SUPERUSER]);
        run_with_stdin(cmd, sql)
    }

    /// Runs an SQL script in `db` as `user` over TCP (127.0.0.1), authenticating with `password`.
    pub fn psql_tcp(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.psql_command(db);
        cmd.args(["-h", "127.0.0.1", "-U", user, "-w"]).env("PGPASSWORD", password);
        run_with_stdin(cmd, sql)
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]).args([
            "-p",
            &self.port.to_string(),
            "-d",
            db,
        ]);
        for var in ["PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS"] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Creates a login role. The password may hold any character (it is quoted as a literal).
    /// Panics on failure: a test-setup error.
    pub fn create_role(&self, user: &str, password: &str) {
        let sql = format!("CREATE ROLE {} LOGIN PASSWORD {};", quote_ident(user), quote_literal(password));
        if let Err(e) = self.psql("postgres", &sql) {
            panic!("creating role {user:?}: {e}");
        }
    }

    /// Creates a database owned by `owner`. Panics on failure: a test-setup error.
    pub fn create_database(&self, name: &str, owner: &str) {
        let sql = format!("CREATE DATABASE {} OWNER {};", quote_ident(name), quote_ident(owner));
        if let Err(e) = self.psql("postgres", &sql) {
            panic!("creating database {name:?}: {e}");
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SIGINT = "fast" shutdown: abort transactions, disconnect clients, checkpoint, exit.
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(READY_INTERVAL),
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `"name"` with embedded double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded single quotes doubled (backslashes are literal with the default
/// `standard_conforming_strings = on`).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn as_user(cmd: &mut Command, run_as: Option<&RunAs>) {
    if let Some(user) = run_as {
        // std drops the supplementary groups (setgroups(0)) when root changes uid.
        cmd.uid(user.uid).gid(user.gid).env("HOME", "/tmp");
        cmd.env("USER", SUPERUSER).env("LOGNAME", SUPERUSER);
    }
}

fn run_with_stdin(mut cmd: Command, input: &str) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running psql: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| format!("writing the script to psql: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("psql failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `$DATAHUB_TEST_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin` with `initdb`.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!("{PG_BIN_ENV}={} has no initdb", dir.display()))
        };
    }
    let root = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("no PostgreSQL found ({PG_BIN_ENV} unset, {}: {e})", root.display()))?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version: Vec<u32> = name.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| format!("no {}/*/bin/initdb and {PG_BIN_ENV} unset", root.display()))
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

/// The `postgres` user must reach the temporary directory: add `o+x` to ancestors that lack it.
fn make_parents_traversable(dir: &Path) -> Result<(), String> {
    for parent in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(parent).map_err(|e| format!("stat {}: {e}", parent.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(|e| format!("making {} traversable: {e}", parent.display()))?;
        }
    }
    Ok(())
}
