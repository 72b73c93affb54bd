#!/usr/bin/env bash
# Real single-host SLURM cluster for ftl's integration tests: munge, a private mariadbd, slurmdbd,
# slurmctld and two slurmd daemons (n1, n2) on this machine, each with 2 fake GPUs.
#   usage: cluster.sh start|stop|status      (state dir: $FTL_SLURM_DIR, default /tmp/ftl-slurm)
# `start` is idempotent: daemons that are already running and healthy are left alone.
# `stop` only stops daemons whose pid files live in the state dir, i.e. the ones this script started.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
S=${FTL_SLURM_DIR:-/tmp/ftl-slurm}
HOST=$(hostname -s)
# Uncommon ports, so we never clash with a system slurm (6817-6819) or mysql (3306).
CTLD_PORT=17817 DBD_PORT=17819 DB_PORT=17306 SLURMD_PORTS=17001-17002
NODES=(n1 n2)
DB_PASS=ftl-slurm-test
export SLURM_CONF=$S/slurm.conf
say() { echo "[slurm] $*"; }

# ---- process tracking --------------------------------------------------------------------------
# A pid file counts only if its process is alive AND has the expected name (pids get reused).
pid_of() { # pidfile comm [cmdline-substring]
  local pid; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ] || return 1
  [ -z "${3:-}" ] || tr '\0' ' ' </proc/"$pid"/cmdline | grep -qw -- "$3" || return 1
  echo "$pid"
}
stop_pid() { # pidfile comm [cmdline-substring]
  local pid; pid=$(pid_of "$@") || { rm -f "$1"; return 0; }
  say "stopping $2${3:+ $3} (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
wait_for() { # seconds description command...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  say "ERROR: timed out after ${t}s waiting for $what"; logs; exit 1
}
logs() {
  for f in "$S"/*.log; do [ -f "$f" ] && { echo "----- $f"; tail -n 20 "$f"; }; done
}

# ---- packages ----------------------------------------------------------------------------------
PKGS=(munge slurm-wlm slurmctld slurmd slurm-client slurmdbd mariadb-server mariadb-client)
install_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && { say "packages present"; return; }
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the index when the cached one is not good enough (saves ~10 s).
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    say "install failed, running apt-get update and retrying"
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
}

# ---- config ------------------------------------------------------------------------------------
render() { # template -> file
  sed -e "s|@STATE@|$S|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$(nproc)|g" \
      -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" \
      -e "s|@SLURMD_PORTS@|$SLURMD_PORTS|g" -e "s|@DB_PASS@|$DB_PASS|g" \
      -e "s|@MAX_ARRAY@|${FTL_SLURM_MAX_ARRAY:-101}|g" "$1" >"$2.tmp"
  mv "$2.tmp" "$2"
}
write_configs() {
  mkdir -p "$S"/{ctld,dev,mysql} "$S"/slurmd-n1 "$S"/slurmd-n2
  for i in 0 1; do ln -sfn /dev/null "$S/dev/gpu$i"; done
  render "$HERE/slurm.conf.in" "$S/slurm.conf"
  render "$HERE/gres.conf.in" "$S/gres.conf"
  [ ! -f "$HERE/cgroup.conf" ] || cp "$HERE/cgroup.conf" "$S/cgroup.conf"
  render "$HERE/slurmdbd.conf.in" "$S/slurmdbd.conf"
  chown root:root "$S/slurmdbd.conf"; chmod 600 "$S/slurmdbd.conf"  # slurmdbd refuses other modes
}

# ---- daemons -----------------------------------------------------------------------------------
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
start_munge() {
  if munge_ok; then say "munged running"; return; fi
  mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged munge_ok
  cp /run/munge/munged.pid "$S/munged.pid"   # remember that *we* started it
}

db() { mariadb --no-defaults --socket="$S/mysql.sock" -uroot "$@"; }
start_mariadb() {
  if pid_of "$S/mysqld.pid" mariadbd >/dev/null && db -e 'select 1' >/dev/null 2>&1; then
    say "mariadbd running"; return
  fi
  if [ ! -d "$S/mysql/mysql" ]; then
    say "initialising mariadb datadir $S/mysql"
    mariadb-install-db --no-defaults --user=root --datadir="$S/mysql" --skip-test-db \
      --auth-root-authentication-method=socket >"$S/mysql-install.log" 2>&1 || { cat "$S/mysql-install.log"; exit 1; }
  fi
  say "starting mariadbd on 127.0.0.1:$DB_PORT"
  # Private instance (own datadir/socket/port, no /etc/mysql config), so we never touch a system one.
  setsid nohup mariadbd --no-defaults --user=root --datadir="$S/mysql" --socket="$S/mysql.sock" \
    --port=$DB_PORT --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$S/mysqld.pid" \
    --log-error="$S/mysqld.log" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --skip-log-bin </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadbd db -e 'select 1'
  db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
         CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

dbd_ok() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
start_slurmdbd() {
  if pid_of "$S/slurmdbd.pid" slurmdbd >/dev/null && dbd_ok; then say "slurmdbd running"; return; fi
  stop_pid "$S/slurmdbd.pid" slurmdbd
  say "starting slurmdbd on port $DBD_PORT"
  slurmdbd
  wait_for 60 slurmdbd dbd_ok
  # Idempotent: -i answers yes; "already exists" is fine.
  sacctmgr -n -P show cluster format=cluster | grep -qx ftl || sacctmgr -i add cluster ftl >/dev/null
}

start_slurmctld() {
  if pid_of "$S/slurmctld.pid" slurmctld >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
    say "slurmctld running"; return
  fi
  stop_pid "$S/slurmctld.pid" slurmctld
  say "starting slurmctld on port $CTLD_PORT"
  slurmctld
  wait_for 30 slurmctld bash -c 'scontrol ping | grep -q UP'
}

start_slurmd() { # node
  if pid_of "$S/slurmd-$1.pid" slurmd "$1" >/dev/null; then say "slurmd $1 running"; return; fi
  say "starting slurmd $1"
  slurmd -N "$1"
}

# Both nodes usable: not down/drained/invalid/unknown and responding (no '*' suffix in %t).
nodes_ok() {
  local bad
  bad=$(sinfo -h -N -p debug -o '%N %t' | grep -Ev '^n[12] (idle|mix|alloc|comp)$' || true)
  [ -z "$bad" ] && [ "$(sinfo -h -N -p debug -o %N | sort -u | wc -l)" -eq 2 ]
}
wait_nodes() {
  for _ in $(seq 120); do
    nodes_ok && return 0
    # ReturnToService=2 normally revives them; resume covers drain/down left over from old state.
    if sinfo -h -N -p debug -o '%t' | grep -Eq '^(down|drain|drng)$'; then
      scontrol update nodename=n[1-2] state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.5
  done
  say "ERROR: nodes not idle after 60s"; sinfo -N -l || true; logs; exit 1
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || { say "ERROR: must run as root"; exit 1; }
  install_packages
  mkdir -p "$S"
  # Running daemons do not re-read changed configs (new nodes/ports need restarts): restart all.
  local before; before=$(cat "$S"/*.conf 2>/dev/null | md5sum || true)
  write_configs
  if [ "$before" != "$(cat "$S"/*.conf | md5sum)" ] && pid_of "$S/slurmctld.pid" slurmctld >/dev/null; then
    say "config changed, restarting daemons"; cmd_stop
  fi
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  for n in "${NODES[@]}"; do start_slurmd "$n"; done
  wait_nodes
  say "cluster up: $(sinfo -h -N -p debug -o '%N=%t' | xargs)"
  echo "export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
  # Cancel our jobs first so no orphaned slurmstepd/job processes outlive slurmd.
  if pid_of "$S/slurmctld.pid" slurmctld >/dev/null && [ -n "$(squeue -h -o %A 2>/dev/null)" ]; then
    say "cancelling jobs"; scancel --full $(squeue -h -o %A) 2>/dev/null || true
    for _ in $(seq 40); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.25; done
  fi
  # Each daemon needs ~2 s to shut down; stop independent ones in parallel, dependants first
  # (slurmctld flushes accounting to slurmdbd, which flushes to mariadbd).
  for n in "${NODES[@]}"; do stop_pid "$S/slurmd-$n.pid" slurmd "$n" & done; wait
  stop_pid "$S/slurmctld.pid" slurmctld
  stop_pid "$S/slurmdbd.pid" slurmdbd
  stop_pid "$S/mysqld.pid" mariadbd & stop_pid "$S/munged.pid" munged & wait
  say "stopped"
}

cmd_status() {
  [ -f "$SLURM_CONF" ] || { say "not configured ($SLURM_CONF missing)"; exit 1; }
  sinfo || true; squeue || true
  if scontrol ping 2>/dev/null | grep -q UP && dbd_ok && nodes_ok; then
    say "healthy"; echo "export SLURM_CONF=$SLURM_CONF"
  else
    say "NOT healthy"; exit 1
  fi
}

# Serialise concurrent start/stop calls (e.g. several test sessions starting the cluster at once).
# flock -o: the lock fd is NOT inherited by the daemons we start (else they would hold it forever).
if [[ ${1:-} =~ ^(start|stop)$ && -z ${FTL_SLURM_LOCKED:-} ]]; then
  mkdir -p "$S"; FTL_SLURM_LOCKED=1 exec flock -o "$S/.lock" "$0" "$@"
fi
case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status   (state dir \$FTL_SLURM_DIR, default /tmp/ftl-slurm)" >&2; exit 2 ;;
esac
