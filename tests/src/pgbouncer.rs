//! A PgBouncer owned by one test: Debian's `pgbouncer` binary as a child process on a free
//! loopback port, in front of a given Postgres, configured the way its users set it up for
//! drivers (`ignore_startup_parameters = extra_float_digits`, nothing else let through).
//! Killed and its directory deleted on drop.
//!
//! PgBouncer refuses to run as root; as root it is started with `-u postgres`, and its
//! directory belongs to that user. `scripts/test` installs the package when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// PgBouncer's pool mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// One server connection per client connection, for as long as it stays.
    Session,
    /// A server connection per transaction.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A running PgBouncer (see the module docs).
pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` in front of the Postgres on 127.0.0.1:`upstream_port`, every
    /// database passed through, with up to `pool_size` server connections per database.
    pub fn start(upstream_port: u16, mode: PoolMode, pool_size: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("vega-pgb-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the PgBouncer directory");
        let port = crate::free_port();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/userlist.txt\nadmin_users = postgres\n\
             pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display(),
            mode = mode.as_str(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").expect("write userlist");
        let mut command = Command::new(binary().unwrap_or_else(|| {
            panic!("pgbouncer is not installed; apt-get install pgbouncer (scripts/test does)")
        }));
        if crate::pg::is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown the PgBouncer directory");
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pgbouncer: {e}"));
        let bouncer = Self { dir, port, child };
        bouncer.wait_listening();
        bouncer
    }

    /// Whether the `pgbouncer` binary is installed.
    pub fn installed() -> bool {
        binary().is_some()
    }

    /// A URL for `database` as the `postgres` superuser, through the pooler.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The pooler's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "pgbouncer did not listen on {} in 10 s: {}",
            self.port,
            self.log()
        );
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's `/usr/sbin/pgbouncer`, else the `PATH`'s.
fn binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.exists() {
        return Some(debian);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbouncer"))
        .find(|path| path.exists())
}
