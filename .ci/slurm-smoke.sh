#!/usr/bin/env bash
# A real SLURM run of the smoke workflow: a one-node cluster on localhost (Debian's slurm-wlm,
# munge, slurmdbd + MariaDB for the plugin's default sacct status path), then
#   snakemake --profile workflow/profiles/slurm --configfile config/smoke.yaml
# in a scratch copy of the repository, and the daemons it started are stopped again.
# Needs root and Debian 12 (no systemd: daemons are started by hand). Usage: .ci/slurm-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
T0=$(date +%s); say() { echo "[slurm-smoke t+$(( $(date +%s) - T0 ))s] $*"; }
export DEBIAN_FRONTEND=noninteractive

STARTED=()
cleanup() {
  say "stopping daemons: ${STARTED[*]:-none}"
  for d in "${STARTED[@]:-}"; do
    [ -n "$d" ] && pkill -x "$d" 2>/dev/null || true
  done
}
trap cleanup EXIT

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge slurmdbd mariadb-server >/dev/null
fi
"$VENV/bin/pip" install -q snakemake-executor-plugin-slurm
say "packages ready"

# --- munge ---------------------------------------------------------------------------------------
install -d -o munge -g munge -m 0755 /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
if ! pidof munged >/dev/null; then runuser -u munge -- /usr/sbin/munged; STARTED+=(munged); fi
munge -n | unmunge >/dev/null

# --- slurm.conf (must exist before sacctmgr runs) ------------------------------------------------
NCPU=$(nproc)
MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 9 / 10 ))
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
install -d /var/spool/slurmd
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

# --- accounting: MariaDB + slurmdbd --------------------------------------------------------------
install -d -o mysql -g mysql /run/mysqld
if ! mariadb -e 'select 1' >/dev/null 2>&1; then
  /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/mariadbd-ci.log 2>&1 &
  STARTED+=(mariadbd)
  for _ in $(seq 60); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
cat >/etc/slurm/slurmdbd.conf <<'CONF'
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
pidof slurmdbd >/dev/null || { slurmdbd; STARTED+=(slurmdbd); }
for _ in $(seq 60); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster ci >/dev/null 2>&1 || true
say "mariadb + slurmdbd up"

pidof slurmctld >/dev/null || { slurmctld; STARTED+=(slurmctld); }
pidof slurmd >/dev/null || { slurmd -N localhost; STARTED+=(slurmd); }
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 1; done
sinfo
srun hostname
say "slurm up (srun ok)"

# --- the smoke workflow through the SLURM profile, in a scratch copy of the repository ----------
WORK=$(mktemp -d /tmp/slurm-smoke.XXXXXX)
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK"
cd "$WORK"
export PATH="$VENV/bin:$PATH"
timeout -s INT 1200 snakemake --profile workflow/profiles/slurm --configfile config/smoke.yaml \
  --config paper='{"enabled": false}'
say "snakemake slurm run done"
ls results/hosts/*/ results/merged/ paper/figures/
sacct -n -X -o JobName%30,State | tail -n 20 || true
