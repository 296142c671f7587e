#!/bin/bash
# A Slurm cluster on this one machine, to run docker/slurm/sfpo_rl.sbatch for real (tests/slurm/). Needs root
# and Debian/Ubuntu packages (installed with apt-get when missing): munge, slurmctld, slurmd, slurmdbd with
# MariaDB (Slurm 22.05 keeps accounting, and so `sacct`, only in slurmdbd's database: no file-based storage).
#
#   docker/slurm/local_cluster.sh up     start munged, MariaDB, slurmdbd, slurmctld and one slurmd per node
#   docker/slurm/local_cluster.sh down   cancel the jobs, stop what `up` started, remove its directory
#   export SLURM_CONF=/tmp/sfpo_slurm/etc/slurm.conf   then sbatch / squeue / sacct talk to this cluster
#
# The nodes are slurmd daemons on this host (`slurmd -N <node>`, each its own port and spool), so a job with
# --nodes=2 gets two nodes, srun steps on each, exactly as on a cluster. Everything lives in one directory
# (config, state, logs, sockets, the database); past the package install nothing goes to /etc, /var or /run.
# Knobs [defaults]:
#   SFPO_SLURM_DIR [/tmp/sfpo_slurm]   SFPO_SLURM_NODES [2]   SFPO_SLURM_CPUS [4: logical CPUs per node]
#   SFPO_SLURM_PORT_BASE [26800: ports BASE+6 MariaDB, +7 slurmctld, +9 slurmdbd, +21.. the slurmds]
set -euo pipefail

DIR=${SFPO_SLURM_DIR:-/tmp/sfpo_slurm}
NNODES=${SFPO_SLURM_NODES:-2}
CPUS=${SFPO_SLURM_CPUS:-4}
BASE=${SFPO_SLURM_PORT_BASE:-26800}
DB_PORT=$((BASE + 6)) CTLD_PORT=$((BASE + 7)) DBD_PORT=$((BASE + 9))
HOST=$(hostname -s)
CLUSTER=sfpo_local
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core mariadb-client-core)
export SLURM_CONF=$DIR/etc/slurm.conf
MARK=SFPO_LOCAL_SLURM=$DIR # in the environment of every daemon this script starts (and their slurmstepds)

say() { echo "[local_cluster] $*"; }
die() {
    echo "[local_cluster] error: $*" >&2
    exit 1
}

install_packages() {
    local missing=() tool
    for tool in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) && return
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install ${PACKAGES[*]}"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
    # Package lists may be absent or stale on a fresh machine: update once if the install fails.
    "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" >"$DIR/log/apt.log" 2>&1 ||
        { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}"; } \
            >>"$DIR/log/apt.log" 2>&1 ||
        die "apt-get could not install ${PACKAGES[*]}: $(tail -n 5 "$DIR/log/apt.log")"
}

# Run a daemon in the foreground of its own session, output to its log; its pid goes to run/<name>.pid and
# its name to run/started (down stops them in reverse order).
start() {
    local name=$1
    shift
    env "$MARK" setsid "$@" </dev/null >>"$DIR/log/$name.log" 2>&1 &
    echo $! >"$DIR/run/$name.pid"
    echo "$name" >>"$DIR/run/started"
}

# wait_for NAME SECONDS COMMAND...: until COMMAND succeeds; fails with NAME's log if it exits or time runs out.
wait_for() {
    local name=$1 limit=$2 deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        kill -0 "$(cat "$DIR/run/$name.pid")" 2>/dev/null || die "$name exited: $(tail -n 20 "$DIR/log/$name.log")"
        ((SECONDS < deadline)) || die "$name not ready after ${limit}s: $(tail -n 20 "$DIR/log/$name.log")"
        sleep 0.5
    done
}

write_configs() {  # DB_PASS: the database password of slurmdbd's user
    local node
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.daemon.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"  # slurmdbd refuses a config others can read
    cat >"$SLURM_CONF" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$DIR/run/slurmd-%n.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# More logical CPUs per node than the host has: the nodes share it.
SlurmdParameters=config_overrides
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For slurmdbd this "password" is the munge socket that clients (sacctmgr, slurmctld) authenticate through.
AccountingStoragePass=$DIR/run/munge.socket
JobAcctGatherType=jobacct_gather/linux
EOF
    for ((node = 1; node <= NNODES; node++)); do
        echo "NodeName=sfpo$node NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((BASE + 20 + node)) CPUs=$CPUS State=UNKNOWN"
    done >>"$SLURM_CONF"
    echo "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$SLURM_CONF"
}

nodes_idle() { [[ $(sinfo -h -N -t idle -o %N | wc -l) -eq $NNODES ]]; }

up() {
    ((EUID == 0)) || die "run as root: slurmd and slurmstepd must, and missing packages are installed with apt-get"
    mkdir -p "$DIR"/{etc,run,log,state,spool,db}
    chmod 700 "$DIR"
    install_packages

    dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/etc/munge.key"
    start munged munged --foreground --force --socket="$DIR/run/munge.socket" --key-file="$DIR/etc/munge.key" \
        --pid-file="$DIR/run/munged.daemon.pid" --seed-file="$DIR/run/munged.seed" --log-file="$DIR/log/munged.file.log"
    wait_for munged 30 test -S "$DIR/run/munge.socket"

    mariadb-install-db --no-defaults --user=root --datadir="$DIR/db" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
        die "mariadb-install-db failed: $(tail -n 20 "$DIR/log/mariadb-install.log")"
    start mariadb mariadbd --no-defaults --user=root --datadir="$DIR/db" --socket="$DIR/run/mariadb.socket" \
        --pid-file="$DIR/run/mariadb.daemon.pid" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve
    wait_for mariadb 60 mariadb --no-defaults --socket="$DIR/run/mariadb.socket" -e 'SELECT 1'
    DB_PASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    mariadb --no-defaults --socket="$DIR/run/mariadb.socket" -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY
        '$DB_PASS'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    write_configs

    start slurmdbd slurmdbd -D
    wait_for slurmdbd 60 sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    start slurmctld slurmctld -D -c -i
    local node
    for ((node = 1; node <= NNODES; node++)); do
        start "slurmd-sfpo$node" slurmd -D -N "sfpo$node"
    done
    wait_for slurmctld 60 nodes_idle
    say "up: Slurm $(sinfo -V | awk '{print $2}'), cluster $CLUSTER, $NNODES node(s) of $CPUS CPUs on $HOST" \
        "(one slurmd each); export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # TERM, up to 30 s, then KILL
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
}

# Pids of processes carrying this cluster's mark (the daemons and the slurmstepds they started).
marked() {
    local environ
    for environ in /proc/[0-9]*/environ; do
        grep -qzx "$MARK" "$environ" 2>/dev/null && basename "$(dirname "$environ")"
    done
    return 0
}

down() {
    [[ -d "$DIR" ]] || { say "nothing to take down in $DIR"; return 0; }
    if [[ -e "$DIR/run/slurmctld.pid" ]] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
        local jobs i
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            say "cancelling job(s) $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086  # one job id per word
            scancel $jobs || true
            for ((i = 0; i < 90 && $(squeue -h 2>/dev/null | wc -l) > 0; i++)); do sleep 1; done
        fi
    fi
    if [[ -e "$DIR/run/started" ]]; then
        local name
        for name in $(tac "$DIR/run/started"); do
            stop_pid "$(cat "$DIR/run/$name.pid")"
        done
    fi
    local pid
    for pid in $(marked); do stop_pid "$pid"; done
    rm -rf "$DIR"
    say "down: stopped and removed $DIR"
}

case "${1:-}" in
    up)
        [[ -e "$DIR/run/started" ]] && die "a cluster from $DIR is up (or was not taken down): run '$0 down' first"
        trap 'if (($? != 0)); then say "up failed: taking down what it started"; down; fi' EXIT
        up
        trap - EXIT
        ;;
    down) down ;;
    *) die "usage: $0 up|down" ;;
esac
