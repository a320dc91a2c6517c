#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the Slurm executor's tests and for trying it out.
#   scripts/slurm_local.sh start DIR   # writes DIR/slurm.conf, starts munged, slurmctld and slurmd (as root)
#   scripts/slurm_local.sh stop DIR
# Clients then find the cluster through SLURM_CONF=DIR/slurm.conf. Needs Debian's slurmctld, slurmd,
# slurm-client and munge (scripts/setup.sh installs them). Any failure says which step failed.
set -euo pipefail
action=${1:?usage: slurm_local.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm_local.sh start|stop DIR}")

die() { echo "slurm_local: $*" >&2; exit 1; }

write_config() {
  local host cpus memory
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  mkdir -p "$dir"/{state,spool,log}
  cat > "$dir/slurm.conf" <<CONF
ClusterName=moelabtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6917}
SlurmdPort=${SLURMD_PORT:-6918}
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  [[ -s /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  die "munge credentials do not round-trip (munge -n | unmunge)"
}

start() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd and munged need it)"
  for tool in slurmctld slurmd sbatch munged; do command -v "$tool" >/dev/null || die "$tool not installed (scripts/setup.sh installs Slurm)"; done
  write_config
  start_munge
  slurmctld -f "$dir/slurm.conf" || die "slurmctld did not start; see $dir/log/slurmctld.log"
  slurmd -f "$dir/slurm.conf" || die "slurmd did not start; see $dir/log/slurmd.log"
  for _ in $(seq 100); do
    if SLURM_CONF=$dir/slurm.conf sinfo -h -o %T 2>/dev/null | grep -qx idle; then echo "slurm_local: cluster up ($dir/slurm.conf)"; return; fi
    sleep 0.2
  done
  die "the node never became idle: $(SLURM_CONF=$dir/slurm.conf sinfo 2>&1 | tail -1); logs in $dir/log"
}

stop() {
  local pids=()
  for daemon in slurmd slurmctld; do
    [[ -f $dir/$daemon.pid ]] && pids+=("$(cat "$dir/$daemon.pid")")
  done
  ((${#pids[@]})) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 100); do  # until they have saved their state and gone
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.1
  done
}

case $action in
  start) start ;;
  stop) stop ;;
  *) die "unknown action $action (start|stop)" ;;
esac
