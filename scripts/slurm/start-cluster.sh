#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost, everything inside one directory:
# munged (own key + socket), MariaDB (private datadir) + slurmdbd for accounting (submitit reads job states
# through sacct), slurmctld, and one slurmd per virtual node (features: pgpstest and its own name, for
# --constraint). Stop it with stop-cluster.sh DIR.
#
# usage: start-cluster.sh DIR [--nodes N] [--cpus C] [--gpus G] [--port P]
#   --gpus G   fake GPUs per node (gres on /dev/null symlinks; 0 = a cluster without GPU gres)
#   --port P   first of the TCP ports used (P: slurmctld, P+1: slurmdbd, P+2: MariaDB, P+10..: slurmd)
# Afterwards: `source DIR/env.sh` (exports SLURM_CONF) and use sbatch/squeue/sacct as usual.
set -euo pipefail

die() { echo "start-cluster: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: start-cluster.sh DIR [--nodes N] [--cpus C] [--gpus G] [--port P]"
DIR=$(mkdir -p "$1" && cd "$1" && pwd); shift
NODES=2; CPUS=$(nproc); GPUS=2; PORT=${PGPS_SLURM_PORT:-16817}
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
for exe in munged mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sacctmgr sinfo; do
  command -v "$exe" >/dev/null || [ -x "/usr/sbin/$exe" ] || die "$exe not found: run scripts/install-system-deps.sh as root"
done
export PATH="$PATH:/usr/sbin"
[ "$(id -u)" = 0 ] || die "needs root (SlurmUser=root, no systemd): run it in CI or a container"
[ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null && die "$DIR: a cluster is already running there"

HOST=$(hostname -s)
CLUSTER=pgpstest
mkdir -p "$DIR"/{etc,run,log,state,spool,munge,mysql,fakegpu}
chmod 755 "$DIR/munge"
SOCK="$DIR/munge/munge.socket"
CTL_PORT=$PORT; DBD_PORT=$((PORT + 1)); DB_PORT=$((PORT + 2))

# --- munge: own key and socket --------------------------------------------------------------------------
if [ ! -s "$DIR/etc/munge.key" ]; then
  dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1 count=1024 status=none
fi
chmod 600 "$DIR/etc/munge.key"
munged --socket="$SOCK" --key-file="$DIR/etc/munge.key" --pid-file="$DIR/run/munged.pid" \
  --log-file="$DIR/log/munged.log" --seed-file="$DIR/run/munged.seed" --force

# --- MariaDB: private datadir, TCP on 127.0.0.1 only -------------------------------------------------------
if [ ! -d "$DIR/mysql/mysql" ]; then
  mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=normal \
    --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || { cat "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
fi
setsid mariadbd --no-defaults --datadir="$DIR/mysql" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
  --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadb.log" \
  --skip-log-bin </dev/null >/dev/null 2>&1 &
for _ in $(seq 100); do
  mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break
  sleep 0.1
done
mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -uroot -e 'select 1' >/dev/null || die "MariaDB did not start: see $DIR/log/mariadb.log"

# --- slurm configuration ------------------------------------------------------------------------------------
cat >"$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
CONF
chmod 600 "$DIR/etc/slurmdbd.conf"

gres_line=""; : >"$DIR/etc/gres.conf"
if [ "$GPUS" -gt 0 ]; then gres_line="Gres=gpu:$GPUS"; fi
nodes=""
{
  cat <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTL_PORT
AuthType=auth/munge
AuthInfo=socket=$SOCK,cred_expire=5
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
MpiDefault=none
KillWait=5
MinJobAge=60
JobRequeue=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCK
JobCompType=jobcomp/none
CONF
  [ "$GPUS" -gt 0 ] && echo "GresTypes=gpu"
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=node$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT + 9 + i)) CPUs=$CPUS RealMemory=4096 $gres_line Features=pgpstest,node$i State=UNKNOWN"
    nodes="${nodes:+$nodes,}node$i"
  done
  echo "PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP"
} >"$DIR/etc/slurm.conf"
for i in $(seq 1 "$NODES"); do
  mkdir -p "$DIR/spool/node$i"
  if [ "$GPUS" -gt 0 ]; then
    mkdir -p "$DIR/fakegpu/node$i"
    for g in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$DIR/fakegpu/node$i/nvidia$g"; done
    echo "NodeName=node$i Name=gpu File=$DIR/fakegpu/node$i/nvidia[0-$((GPUS - 1))]" >>"$DIR/etc/gres.conf"
  fi
done
cat >"$DIR/env.sh" <<CONF
export SLURM_CONF=$DIR/etc/slurm.conf
CONF
export SLURM_CONF="$DIR/etc/slurm.conf"

# --- daemons ------------------------------------------------------------------------------------------------
slurmdbd
for _ in $(seq 100); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.1; done
sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
slurmctld
for i in $(seq 1 "$NODES"); do slurmd -N "node$i"; done
for _ in $(seq 150); do
  idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)
  [ "$idle" -ge "$NODES" ] && break
  sleep 0.2
done
[ "$idle" -ge "$NODES" ] || { sinfo >&2 || true; die "nodes did not become idle: see $DIR/log/"; }
echo "SLURM cluster '$CLUSTER' up: $NODES nodes x $CPUS CPUs, $GPUS fake GPUs each; source $DIR/env.sh"
