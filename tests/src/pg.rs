//! A Postgres server owned by one test: `initdb` into a temporary directory with the
//! installed server binaries, started on a free loopback port, stopped and deleted on drop.
//!
//! Tests that restart, stop, freeze (SIGSTOP) or terminate the backends of a server use one
//! of these, never the shared server on 5432 that every other test uses.
//!
//! The binaries are found the way Debian lays them out (`/usr/lib/postgresql/<version>/bin`,
//! newest first), then on `PATH`. `initdb` refuses to run as root, so as root the server runs
//! as the `postgres` user (`runuser`), which owns the directory.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A throwaway Postgres cluster (see the module docs).
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl PgServer {
    /// `initdb`s and starts a server with Postgres' default settings, except `fsync = off`
    /// (nothing here must survive a power cut) and the `settings` given (`("work_mem",
    /// "64MB")`).
    pub fn start(settings: &[(&str, &str)]) -> Self {
        let bin = server_bin_dir();
        let as_postgres_user = is_root();
        let dir = std::env::temp_dir().join(format!("vega-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        let port = crate::free_port();
        let server = Self {
            dir,
            bin,
            port,
            as_postgres_user,
        };
        if as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(&server.dir));
        }
        run(server
            .command("initdb")
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "-D"])
            .arg(server.data()));
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\n",
            server.dir.display()
        );
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        let conf_path = server.data().join("postgresql.auto.conf");
        std::fs::write(&conf_path, conf).expect("write postgresql.auto.conf");
        if as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(&conf_path));
        }
        server.pg_ctl(&["start"]);
        server
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`, WAL streamed during the copy),
    /// started on a free port of its own; [`Self::promote`] makes it a writer.
    pub fn standby_of(primary: &PgServer) -> Self {
        Self::standby_with(primary, &[])
    }

    /// [`Self::standby_of`] with `settings` of its own (`("recovery_min_apply_delay", "2s")`
    /// for a lagging reader).
    pub fn standby_with(primary: &PgServer, settings: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("vega-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the standby directory");
        let server = Self {
            dir,
            bin: primary.bin.clone(),
            port: crate::free_port(),
            as_postgres_user: primary.as_postgres_user,
        };
        if server.as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(&server.dir));
        }
        run(server
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--no-sync",
            ])
            .arg("--checkpoint=fast")
            .args(["-p", &primary.port.to_string(), "-D"])
            .arg(server.data()));
        // The copy brought the primary's port and socket directory; -R appended the
        // connection to it. Later lines win.
        let conf_path = server.data().join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&conf_path).expect("read postgresql.auto.conf");
        conf.push_str(&format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            server.port,
            server.dir.display()
        ));
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        std::fs::write(&conf_path, conf).expect("write postgresql.auto.conf");
        server.pg_ctl(&["start"]);
        server
    }

    /// Promotes a standby to a writer; returns when it accepts writes.
    pub fn promote(&self) {
        self.pg_ctl(&["promote"]);
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `database` and applies every migration to it; returns its URL.
    pub async fn migrated_database(&self, database: &str) -> String {
        use sea_orm::ConnectionTrait;
        use vega_migration::MigratorTrait;
        let admin = sea_orm::Database::connect(self.url("postgres"))
            .await
            .expect("connect to the throwaway server");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create the database");
        admin.close().await.ok();
        let url = self.url(database);
        let db = sea_orm::Database::connect(&url)
            .await
            .expect("connect to the new database");
        vega_migration::Migrator::up(&db, None)
            .await
            .expect("migrate the new database");
        db.close().await.ok();
        url
    }

    /// Sets `name` to `value` (`ALTER SYSTEM`) and reloads the configuration; on a standby too.
    pub async fn set(&self, name: &str, value: &str) {
        use sea_orm::ConnectionTrait;
        let admin = sea_orm::Database::connect(self.url("postgres"))
            .await
            .expect("connect to the throwaway server");
        for sql in [
            format!("ALTER SYSTEM SET {name} = '{value}'"),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin
                .execute_unprepared(&sql)
                .await
                .expect("set and reload");
        }
        admin.close().await.ok();
    }

    /// Waits (up to 30 s) until a standby streams from this primary.
    pub async fn await_streaming(&self) {
        use sea_orm::ConnectionTrait;
        let admin = sea_orm::Database::connect(self.url("postgres"))
            .await
            .expect("connect to the throwaway server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let streaming = admin
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'",
                ))
                .await
                .expect("read pg_stat_replication");
            if streaming.is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the standby never streamed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        admin.close().await.ok();
    }

    /// `pg_ctl restart -m fast`: sessions are ended, the server is back when this returns.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// Stops the server (fast shutdown); [`Self::resume`] starts it again.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]);
    }

    /// Starts a server stopped by [`Self::stop`].
    pub fn resume(&self) {
        self.pg_ctl(&["start"]);
    }

    /// SIGSTOPs the postmaster and every backend: connections stay open and nothing answers,
    /// as with a hung host. [`Self::thaw`] undoes it (as does drop).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONTs what [`Self::freeze`] stopped.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Ends every client session on `database`, as a failover or a proxy dropping its
    /// connections does; returns how many were ended.
    pub async fn terminate_backends(&self, database: &str) -> i64 {
        use sea_orm::ConnectionTrait;
        let admin = sea_orm::Database::connect(self.url("postgres"))
            .await
            .expect("connect to the throwaway server");
        let row = admin
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                      WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                ),
            ))
            .await
            .expect("terminate backends")
            .expect("a count");
        admin.close().await.ok();
        row.try_get("", "n").expect("count")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command.stdin(Stdio::null());
        command
    }

    fn pg_ctl(&self, args: &[&str]) {
        run(self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(args));
    }

    /// The postmaster and its children, read from `postmaster.pid` and `/proc`.
    fn pids(&self) -> Vec<String> {
        let Ok(pidfile) = std::fs::read_to_string(self.data().join("postmaster.pid")) else {
            return Vec::new();
        };
        let Some(postmaster) = pidfile.lines().next().map(str::trim).map(str::to_owned) else {
            return Vec::new();
        };
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised command name: state, then the parent's pid.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if parent == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        pids
    }

    fn signal(&self, signal: &str) {
        let pids = self.pids();
        assert!(!pids.is_empty(), "the throwaway server is not running");
        run(Command::new("kill").arg(signal).args(&pids));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A frozen server would not stop; an immediate stop does not wait for clients.
        let pids = self.pids();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-CONT").args(&pids).status();
        }
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`, else the `PATH`'s.
fn server_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "no Postgres server binaries (initdb) under /usr/lib/postgresql or on PATH; install \
             postgresql (scripts/test does)"
        )
    })
}
