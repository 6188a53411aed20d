#!/usr/bin/env bash
# A real SLURM run of the smoke workflow: a one-node cluster on localhost (Debian's slurm-wlm,
# munge, slurmdbd + MariaDB for the plugin's default sacct status path), then
#   snakemake --profile workflow/profiles/slurm --configfile config/smoke.yaml
# in a scratch copy of the repository. Then it checks the outcome, failing loudly otherwise:
#   - sacct: every job of the run (the plugin names them by run id and puts rule_<rule> in the
#     comment) COMPLETED, and build, hostinfo, autotune and every benchmark ran on the cluster;
#   - every host CSV and merged table passes its JSON schema (paired_replacement.bench.common),
#     and the benchmarks loaded the per-host build (column build_source);
# and runs workflow/profiles/slurm-noacct for real on one cheap job (the build, forced) with the
# accounting daemon stopped, so that job states can only come from squeue.
# The daemons it started are stopped again (by their process ids). Needs root and Debian 12 (no
# systemd: daemons are started by hand). Usage: .ci/slurm-smoke.sh  (KEEP_WORK=1: keep the copy)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
T0=$(date +%s); say() { echo "[slurm-smoke t+$(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "[slurm-smoke] FAILED: $*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# Daemons this script started, as "name:pid", in start order (stopped in reverse order).
STARTED=()
WORK=
pid_from() {  # pid_from PIDFILE: waits for a daemon's pid file, prints the pid
  for _ in $(seq 50); do [ -s "$1" ] && { cat "$1"; return; }; sleep 0.2; done
  fail "no pid file $1"
}
stop_daemon() {  # stop_daemon NAME PID: SIGTERM, then SIGKILL after 30 s
  local name=$1 pid=$2
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "[slurm-smoke] $name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  say "stopping daemons: ${STARTED[*]:-none}"
  for (( i=${#STARTED[@]}-1; i>=0; i-- )); do
    [ -n "${STARTED[i]}" ] && stop_daemon "${STARTED[i]%%:*}" "${STARTED[i]##*:}"
  done
  # the scratch copy is removed after a success (kept after a failure, or with KEEP_WORK=1)
  if [ "$rc" -eq 0 ] && [ -n "$WORK" ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; fi
  exit "$rc"
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
if ! pidof munged >/dev/null; then
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  STARTED+=("munged:$(pid_from /run/munge/munged.pid)")
fi
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
AccountingStoreFlags=job_comment
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
  STARTED+=("mariadbd:$!")
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
SLURMDBD_PID=
if ! pidof slurmdbd >/dev/null; then
  rm -f /run/slurmdbd.pid; slurmdbd
  SLURMDBD_PID=$(pid_from /run/slurmdbd.pid); STARTED+=("slurmdbd:$SLURMDBD_PID")
fi
for _ in $(seq 60); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster ci >/dev/null 2>&1 || true
say "mariadb + slurmdbd up"

if ! pidof slurmctld >/dev/null; then
  rm -f /run/slurmctld.pid; slurmctld; STARTED+=("slurmctld:$(pid_from /run/slurmctld.pid)")
fi
if ! pidof slurmd >/dev/null; then
  rm -f /run/slurmd.pid; slurmd -N localhost; STARTED+=("slurmd:$(pid_from /run/slurmd.pid)")
fi
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 1; done
sinfo
srun hostname
say "slurm up (srun ok)"

# --- the smoke workflow through the SLURM profile, in a scratch copy of the repository ----------
WORK=$(mktemp -d /tmp/slurm-smoke.XXXXXX)
# (safe.directory: root in a clone owned by another user; listing files changes nothing)
git -c safe.directory="$REPO" ls-files -z --cached --others --exclude-standard \
  | tar --null -T - -cf - | tar -xf - -C "$WORK"
cd "$WORK"
export PATH="$VENV/bin:$PATH"
timeout -s INT 1200 snakemake --profile workflow/profiles/slurm --configfile config/smoke.yaml \
  --config paper='{"enabled": false}' 2>&1 | tee slurm-run.log
say "snakemake slurm run done"
ls results/hosts/*/ results/merged/ paper/figures/

# --- the outcome: sacct says every job of the run ran on the cluster and COMPLETED --------------
RUN_ID=$(sed -n 's/.*SLURM run ID: \([A-Za-z0-9_-]*\).*/\1/p' slurm-run.log | head -n 1)
[ -n "$RUN_ID" ] || fail "no 'SLURM run ID' in the snakemake output"
sacct -X -n -P --name "$RUN_ID" -S now-1days -o JobIDRaw,JobName,Comment,State,NodeList \
  > sacct.txt || fail "sacct failed"
echo "sacct of run $RUN_ID (JobIDRaw|JobName|Comment|State|NodeList):"; cat sacct.txt
python - slurm-run.log sacct.txt <<'PY'
"""Every job Snakemake planned for the cluster (Job stats minus local rules) is a COMPLETED job
of this run in sacct; the build, hostinfo, autotune and the benchmarks are among them."""
import re
import sys
from pathlib import Path

log, table = Path(sys.argv[1]).read_text(), Path(sys.argv[2]).read_text()
LOCAL = {"all", "study_config", "merge", "figures", "tables", "numbers", "paper"}
planned, lines = {}, log.splitlines()
start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
for line in lines[start + 3:]:
    match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
    if not match:
        break
    if match[1] != "total" and match[1] not in LOCAL:
        planned[match[1]] = int(match[2])
jobs = [line.split("|") for line in table.splitlines() if line.strip()]
states, problems = {}, []
for job_id, _name, comment, state, node in jobs:
    rule = re.fullmatch(r"rule_(\w+?)(_wildcards_.*)?", comment)
    if rule is None:
        problems.append(f"job {job_id}: comment {comment!r} names no rule")
        continue
    states.setdefault(rule[1], []).append(state)
    if state != "COMPLETED":
        problems.append(f"job {job_id} (rule {rule[1]}, node {node}): {state}")
for rule, count in planned.items():
    done = states.get(rule, []).count("COMPLETED")
    if done != count:
        problems.append(f"rule {rule}: {count} job(s) planned, {done} COMPLETED in sacct")
required = {"hostinfo", "build", "autotune", "micro", "e2e", "sweep", "perf", "micro_file"}
for rule in sorted(required - set(planned)):
    problems.append(f"rule {rule} was not run on the cluster (not in the Job stats)")
unplanned = set(states) - set(planned)
if unplanned:
    problems.append(f"sacct has jobs of rules snakemake did not plan: {sorted(unplanned)}")
if problems:
    sys.exit("sacct check FAILED:\n  " + "\n  ".join(problems))
print("sacct: COMPLETED on the cluster:",
      ", ".join(f"{rule} x{count}" for rule, count in sorted(planned.items())))
PY
say "sacct: every cluster job COMPLETED"

# --- the outcome: every CSV passes its JSON schema; the benchmarks loaded the host's build ------
python - <<'PY'
import sys
from pathlib import Path

from paired_replacement.analysis.data import HOST_CSVS, MERGED_TABLES
from paired_replacement.bench import common

problems, checked = [], 0
hosts = sorted(p for p in Path("results/hosts").iterdir() if p.is_dir())
if not hosts:
    sys.exit("schema check FAILED: no host folder under results/hosts/")
for host in hosts:
    build = str((host / "build").resolve())
    for name in ("micro.csv", "e2e.csv", "sweep.csv", "perf.csv", "autotune.csv",
                 "micro_file.csv"):
        if not (host / name).is_file():
            problems.append(f"{host / name}: missing")
    for name, kind in HOST_CSVS.items():
        path = host / name
        if not path.is_file():
            continue
        try:
            frame = common.read_results_csv(path, MERGED_TABLES[kind])
        except common.SchemaError as exc:
            problems.append(str(exc))
            continue
        checked += 1
        sources = set(frame["build_source"])
        if name != "perf.csv" and sources != {build}:  # perf counts its own C++ driver
            problems.append(f"{path}: build_source {sorted(sources)}, not the host's build {build}")
for kind, schema in MERGED_TABLES.items():
    path = Path("results/merged") / f"{kind}.csv"
    if not path.is_file():
        problems.append(f"{path}: missing")
        continue
    lines = path.read_text().splitlines()
    try:
        if len(lines) == 1:  # a stage without rows here (e.g. no model): the header only
            if lines[0].split(",") != common.column_names(schema):
                problems.append(f"{path}: header differs from schema '{schema}'")
        else:
            common.read_results_csv(path, schema)
        checked += 1
    except common.SchemaError as exc:
        problems.append(str(exc))
if problems:
    sys.exit("schema check FAILED:\n  " + "\n  ".join(problems))
print(f"schemas: {checked} CSVs valid; every benchmark loaded its host's build")
PY
say "schemas: every CSV valid"

# --- workflow/profiles/slurm-noacct for real: the build alone, forced, accounting stopped ---------
# Without accounting sacct knows no job; the profile's status command (squeue) must see the job
# finish. slurmdbd is stopped here (slurmctld keeps the records for it), so sacct cannot answer.
if [ -n "$SLURMDBD_PID" ]; then
  stop_daemon slurmdbd "$SLURMDBD_PID"
  STARTED=("${STARTED[@]/slurmdbd:$SLURMDBD_PID}")  # stopped: not again at exit (pid reuse)
  if sacct -X -n --name none >/dev/null 2>&1; then
    fail "sacct still answers with slurmdbd stopped"
  fi
  say "slurmdbd stopped: sacct answers nothing"
else
  say "slurmdbd was running before this script: left running (sacct still answers)"
fi
HOST=$(basename "$(ls -d results/hosts/*/ | head -n 1)")
MANIFEST=results/hosts/$HOST/build/manifest.json
before=$(stat -c %Y "$MANIFEST")
sleep 1
timeout -s INT 300 snakemake "$MANIFEST" --profile workflow/profiles/slurm-noacct \
  --configfile config/smoke.yaml --forcerun build 2>&1 | tee noacct-run.log
grep -q "Finished jobid: .* (Rule: build)" noacct-run.log \
  || fail "slurm-noacct: no finished build job in the snakemake output"
[ "$(stat -c %Y "$MANIFEST")" -gt "$before" ] || fail "slurm-noacct: $MANIFEST was not rebuilt"
NOACCT_ID=$(sed -n 's/.*SLURM run ID: \([A-Za-z0-9_-]*\).*/\1/p' noacct-run.log | head -n 1)
squeue --states=all -h --name "$NOACCT_ID" -o '%i|%j|%k|%T' | tee squeue.txt
grep -q '|rule_build.*|COMPLETED$' squeue.txt \
  || fail "slurm-noacct: squeue shows no COMPLETED build job"
say "slurm-noacct: the build ran on the cluster and COMPLETED (squeue)"
