# Shared by the scripts in this directory: paths, cached tools, and a reachable Postgres.
# Sourced, not run.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_dir=${VEGA_CACHE_DIR:-$HOME/.cache/vega-storage}
# One target directory outside the clone, so CI's fresh clones reuse earlier builds.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache_dir/target}
tools_dir=$cache_dir/tools
export PATH="$tools_dir/bin:$PATH"

pg_admin_url=${VEGA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# Keep in step with the sea-orm version in Cargo.lock: generated entities carry its banner.
sea_orm_cli_version=2.0.4

# Seconds since the outermost script started, on every step's line (nested scripts share it).
export VEGA_SCRIPT_START=${VEGA_SCRIPT_START:-$(date +%s)}
log() { printf '==> [%4ss] %s\n' "$(( $(date +%s) - VEGA_SCRIPT_START ))" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Postgres on 127.0.0.1:5432: start the installed cluster if it is stopped, install it if it
# is missing and we are root, otherwise say exactly what to do.
ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed; install it (apt-get install postgresql) or set VEGA_TEST_POSTGRES_URL"
    log "installing PostgreSQL (apt-get install postgresql)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || die "PostgreSQL is installed but has no cluster under /etc/postgresql"
  local hba=/etc/postgresql/$version/main/pg_hba.conf
  # The tests connect as postgres over TCP without a password, as on the project's machines.
  if [ "$(id -u)" -eq 0 ] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    log "allowing trust auth for 127.0.0.1 in $hba (test machines only)"
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  if [ "$(id -u)" -eq 0 ]; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    pg_ctlcluster "$version" main start || die "cannot start PostgreSQL $version; start it and retry"
  fi
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return
    sleep 1
  done
  die "PostgreSQL did not become ready on 127.0.0.1:5432"
}

# sea-orm-cli, pinned, installed once into the cache. A debug build: it compiles in half the
# time of a release one (51 s against 99 s on two cores) and generates the entities as fast.
ensure_sea_orm_cli() {
  if sea-orm-cli --version 2>/dev/null | grep -q " $sea_orm_cli_version\$"; then return; fi
  log "installing sea-orm-cli $sea_orm_cli_version into $tools_dir (once)"
  CARGO_TARGET_DIR=$cache_dir/tools-target cargo install sea-orm-cli \
    --version "$sea_orm_cli_version" --locked --no-default-features \
    --features codegen,runtime-tokio-rustls,sqlx-postgres --root "$tools_dir" --quiet --debug
}

# cargo-nextest, the test runner (machines of this kind come with it); installed once into the
# cache where it is missing.
ensure_nextest() {
  if cargo nextest --version >/dev/null 2>&1; then return; fi
  log "installing cargo-nextest into $tools_dir (once)"
  CARGO_TARGET_DIR=$cache_dir/tools-target cargo install cargo-nextest --version 0.9.143 --locked \
    --root "$tools_dir" --quiet
}

# A virtualenv under the cache with the pinned packages of scripts/<name>-requirements.txt,
# rebuilt only when that file changes. Prints its path.
ensure_venv() {
  local requirements=$repo_root/scripts/$1-requirements.txt hash venv
  hash=$(sha256sum "$requirements" | cut -c1-12)
  venv=$cache_dir/venv-$1-$hash
  # The marker is written last, so an interrupted install is redone rather than trusted.
  if [ ! -f "$venv/.complete" ]; then
    command -v python3 >/dev/null || die "python3 is missing; install Python 3.9+ with venv and pip"
    log "installing $(grep -v '^#' "$requirements" | tr '\n' ' ')into $venv (once)"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    touch "$venv/.complete"
  fi
  printf '%s\n' "$venv"
}

# Debian's PgBouncer, for the tests that run one on a free port in front of a server (never on
# its packaged port 6432). The package's own service is kept from starting.
ensure_pgbouncer() {
  if [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1; then return; fi
  [ "$(id -u)" -eq 0 ] || die "pgbouncer is not installed; install it (apt-get install pgbouncer)"
  log "installing PgBouncer (apt-get install pgbouncer)"
  local policy=/usr/sbin/policy-rc.d placed=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && placed=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
  [ -z "$placed" ] || rm -f "$policy"
  [ -x /usr/sbin/pgbouncer ] || die "apt-get did not install /usr/sbin/pgbouncer"
}
