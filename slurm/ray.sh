# shellcheck shell=bash
# Ray on SLURM: the shell half of `sweep submit` (sweeps/slurm/submit.py renders the job scripts).
#
# The rendered job scripts source this file; srun (the other nodes of a single job) and the
# worker jobs of --mode workers run it as `bash slurm/ray.sh worker ADDRESS|ADDRESS_FILE [NODE]`.
# It needs PYTHON (an interpreter with ray installed) and SLURM_JOB_ID.
#
# Ports. Every Ray port of a node follows from the job id, so jobs sharing a node do not collide:
#   slot  = (SLURM_JOB_ID + node index) % 127        node index: 0 for the head
#   first = 20000 + 100 * slot                        20000-32699: above Ray's default worker
#                                                     ports, below Linux's ephemeral range
#   first+0 GCS, +1 node manager, +2 object manager, +3 client server (only if ray[client] is
#   installed: Ray refuses the option otherwise), +4 dashboard, +5 dashboard agent (http),
#   +6 dashboard agent (grpc), +7 metrics, +8 runtime env agent, +10..+99 worker processes.
# A slot with a port already taken (another job's Ray, another node of this job on the same
# host) is skipped for the next one: the formula says where a node starts looking. A node also
# claims its slot with flock(1) on $SWEEPS_RAY_TMP/sweeps-ray-slot-<first port>.lock, held while
# the job lives, so that two jobs that start at the same moment never both find a slot free.
# Temp dir: $SWEEPS_RAY_TMP/r<job id>n<node index> (default /tmp/...): short, because Unix
# socket paths over 107 bytes abort Ray.
# Token: Ray's token authentication is on (RAY_AUTH_MODE=token, set by the job script). The head
# job writes a new random token to $RAY_AUTH_TOKEN_PATH (in the sweep's folder, mode 0600) before
# its Ray starts; every Ray process, the driver and the worker jobs read it from there. Ray's
# ports listen on every interface of a node (other nodes must reach them): a process without
# the token is refused by each of them.
# Cleanup: every Ray process started here carries SWEEPS_RAY_TAG=<its temp dir> in its
# environment and cleanup ends exactly those; never `ray stop`, which ends every Ray on the node.
# Ray 2.60 drains a node on SIGTERM for up to 30 s, waiting for its running tasks: a trial's
# actor runs for minutes, so the drain would only outlast SLURM's KillWait and this job's
# cleanup (which then could not end Ray). The node is ended at once instead; its trials are
# retried from their checkpoints elsewhere (search.max_failures).

SWEEPS_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SWEEPS_RAY_TMP=${SWEEPS_RAY_TMP:-/tmp}
SWEEPS_STOP=""     # the signal that asked this job to stop: USR1 (pre-timeout), TERM or INT
DRIVER_PID=""
DRIVER_RC=0
RAY_PID=""
RAY_TAG=""
RAY_TEMP=""
SLOT_FD=""         # the open lock file of the claimed slot (flock)
RAY_SRUN_PID=""    # single job: the srun running Ray on the other nodes
WORKERS_JOB=""     # workers mode: the worker array, cancelled when the head ends
ADDRESS_FILE=""    # workers mode: where the head publishes its address
TOKEN_FILE=""      # the Ray token this (head) job wrote, removed at its end
RAY_JOIN_TRIES=${RAY_JOIN_TRIES:-3}        # a worker's tries at joining the head
RAY_JOIN_RETRY_S=${RAY_JOIN_RETRY_S:-120}  # a worker's Ray that failed sooner: a failed join

sweeps_log() { printf '[sweeps %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
sweeps_fail() { sweeps_log "error: $*" >&2; exit 1; }

# Number of CPUs / GPUs SLURM gave this task on this node; Ray never guesses them.
slurm_cpus() { echo "${SLURM_CPUS_PER_TASK:-1}"; }
slurm_gpus() {
  if [[ -n ${SLURM_GPUS_ON_NODE-} ]]; then
    echo "$SLURM_GPUS_ON_NODE"
  elif [[ -n ${CUDA_VISIBLE_DEVICES-} ]]; then
    local ids
    IFS=, read -r -a ids <<<"$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
  else
    echo 0
  fi
}

# ports_free FIRST COUNT: succeeds when no TCP port FIRST..FIRST+COUNT-1 is taken on this host.
ports_free() {
  "$PYTHON" - "$1" "$2" <<'PY'
import socket, sys
first, count = int(sys.argv[1]), int(sys.argv[2])
for port in range(first, first + count):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            sys.exit(1)
PY
}

# ray_slot NODE: the first port of the slot the formula gives (no check).
ray_slot() { echo $((20000 + 100 * ((SLURM_JOB_ID + $1) % 127))); }

# slot_claim FIRST: lock the slot that starts at port FIRST for as long as this shell lives
# (SLOT_FD); fails when another job holds it. Without flock(1) it succeeds: the port check
# alone decides. Another user's lock file is opened read-only, which flock accepts.
slot_claim() {
  command -v flock >/dev/null || return 0
  local lock="$SWEEPS_RAY_TMP/sweeps-ray-slot-$1.lock"
  [[ -e $lock ]] || : 2>/dev/null >"$lock"
  [[ -r $lock ]] || return 1
  exec {SLOT_FD}<"$lock"
  flock -n "$SLOT_FD" && return 0
  slot_release
  return 1
}

# slot_release: let go of the claimed slot (closes SLOT_FD, if any).
slot_release() {
  if [[ -n $SLOT_FD ]]; then
    exec {SLOT_FD}<&-
  fi
  SLOT_FD=""
}

# ray_ports NODE: set RAY_PORT, the first of 100 free ports, starting at the formula's slot,
# and claim that slot.
ray_ports() {
  local first try
  first=$(ray_slot "$1")
  for ((try = 0; try < 127; try++)); do
    RAY_PORT=$((20000 + (first - 20000 + 100 * try) % 12700))
    if slot_claim "$RAY_PORT"; then
      ports_free "$RAY_PORT" 100 && return 0
      slot_release
    fi
    sweeps_log "ports $RAY_PORT-$((RAY_PORT + 99)) are in use or claimed here: trying the next 100"
  done
  sweeps_fail "no 100 free ports in 20000-32699 on $(hostname)"
}

# ray_start head|worker NODE [ray start options...]: start this node's Ray in the background
# (`ray start --block`, tagged for cleanup); sets RAY_PID, RAY_PORT, RAY_TEMP.
ray_start() {
  local role=$1 node=$2 p
  shift 2
  ray_ports "$node"
  p=$RAY_PORT
  RAY_TEMP="$SWEEPS_RAY_TMP/r${SLURM_JOB_ID}n$node"
  RAY_TAG=$RAY_TEMP  # unique on this host, even with a second (test) cluster beside this one
  local args=(--block --temp-dir="$RAY_TEMP" --node-manager-port=$((p + 1))
    --object-manager-port=$((p + 2)) --dashboard-agent-listen-port=$((p + 5))
    --dashboard-agent-grpc-port=$((p + 6)) --metrics-export-port=$((p + 7))
    --runtime-env-agent-port=$((p + 8)) --min-worker-port=$((p + 10))
    --max-worker-port=$((p + 99)) --resources="{\"slurm-node:${SLURMD_NODENAME:-$(hostname -s)}\": 1}")
  if [[ $role == head ]]; then
    args+=(--head --port="$p" --dashboard-port=$((p + 4)) --include-dashboard=false)
    if "$PYTHON" -c 'import grpc' 2>/dev/null; then  # Ray starts a client server only then
      args+=(--ray-client-server-port=$((p + 3)))
    fi
  fi
  sweeps_log "starting a Ray $role on $(hostname -s) (SLURM node ${SLURMD_NODENAME:-?}," \
    "node index $node): $* ports $p-$((p + 99)), temp dir $RAY_TEMP"
  SWEEPS_RAY_TAG=$RAY_TAG RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 \
    "$PYTHON" -m ray.scripts.scripts start "${args[@]}" "$@" &
  RAY_PID=$!
}

# ray_token: a new token at $RAY_AUTH_TOKEN_PATH, readable by this user only (the head job's).
ray_token() {
  [[ ${RAY_AUTH_MODE-} == token ]] || {
    sweeps_log "warning: Ray token authentication is off (RAY_AUTH_MODE=${RAY_AUTH_MODE-}):" \
      "anyone who can reach this job's nodes can run code in its Ray"
    return 0
  }
  TOKEN_FILE=${RAY_AUTH_TOKEN_PATH:?the job script sets it}
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE.tmp" &&
    mv -f "$TOKEN_FILE.tmp" "$TOKEN_FILE") || sweeps_fail "cannot write the Ray token $TOKEN_FILE"
}

# ray_head [ray start options...]: start the head here (with a new token) and wait until its
# GCS answers; exports RAY_ADDRESS for the driver.
ray_head() {
  ray_token
  ray_start head 0 "$@"
  RAY_ADDRESS=$("$PYTHON" "$SWEEPS_SLURM_DIR/ray_cluster.py" address "$RAY_PORT" "$RAY_PID") ||
    sweeps_fail "the Ray head did not start on $(hostname -s): see the lines above"
  export RAY_ADDRESS
  sweeps_log "Ray head up at $RAY_ADDRESS"
}

# ray_other_nodes SRUN_OPTION...: a Ray worker on each other node of this single job, through
# one srun in the background (RAY_SRUN_PID, stopped by sweeps_cleanup).
ray_other_nodes() {
  srun "$@" --exclude="$SLURMD_NODENAME" bash "$SWEEPS_SLURM_DIR/ray.sh" worker "$RAY_ADDRESS" &
  RAY_SRUN_PID=$!
}

# ray_wait_nodes N: wait until N Ray nodes are alive (the head and the other nodes' workers).
ray_wait_nodes() {
  "$PYTHON" "$SWEEPS_SLURM_DIR/ray_cluster.py" nodes "$RAY_ADDRESS" "$1" ||
    sweeps_fail "fewer than $1 Ray nodes joined: see the lines above"
}

# ray_publish_address FILE: write RAY_ADDRESS to FILE (atomically) for the worker jobs.
ray_publish_address() {
  ADDRESS_FILE=$1
  { printf '%s\n' "$RAY_ADDRESS" >"$ADDRESS_FILE.tmp" && mv -f "$ADDRESS_FILE.tmp" "$ADDRESS_FILE"; } ||
    sweeps_fail "cannot write the head's address to $ADDRESS_FILE"
}

# sweeps_submit_workers FOLDER <SCRIPT: sbatch the worker array's script (on stdin); check and
# log its job id (WORKERS_JOB, cancelled by sweeps_cleanup).
sweeps_submit_workers() {
  WORKERS_JOB=$(sbatch --parsable)
  WORKERS_JOB=${WORKERS_JOB%%;*}
  [[ $WORKERS_JOB =~ ^[0-9]+$ ]] || sweeps_fail "the worker jobs were not submitted"
  sweeps_log "worker jobs: array $WORKERS_JOB, logs in $1/worker-${WORKERS_JOB}_<n>.out"
}

# ray_report: where the sweep's trial actors ran, per SLURM node (Ray's record; best effort).
ray_report() {
  "$PYTHON" "$SWEEPS_SLURM_DIR/ray_cluster.py" report "$RAY_ADDRESS" || true
}

# sweeps_check_python: fail early, and clearly, when PYTHON cannot run the sweep.
sweeps_check_python() {
  "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("ray") and u.find_spec("sweeps")))' ||
    sweeps_fail "$PYTHON on $(hostname -s) cannot import ray and sweeps: install the project" \
      "in the job's environment (docs/slurm.md)"
}

# ray_worker ADDRESS|ADDRESS_FILE NODE: join the cluster and stay until the job ends.
ray_worker() {
  local address=$1 node=$2
  if [[ $address == /* ]]; then  # workers mode: the head publishes its address in a file
    [[ -s $address ]] || sweeps_fail "no head address in $address: is the head job running?"
    address=$(<"$address")
  fi
  if [[ ${RAY_AUTH_MODE-} == token && ! -s ${RAY_AUTH_TOKEN_PATH-} ]]; then
    sweeps_fail "no Ray token at ${RAY_AUTH_TOKEN_PATH-?}: is the head job running?"
  fi
  trap ray_cleanup EXIT
  trap 'exit 143' TERM
  trap 'exit 140' USR2  # the head job is done with this node (sent through srun)
  trap 'exit 130' INT
  local try rc started
  for ((try = 1; ; try++)); do
    started=$SECONDS
    ray_start worker "$node" --address="$address" --num-cpus="$(slurm_cpus)" \
      --num-gpus="$(slurm_gpus)"
    wait "$RAY_PID"
    rc=$?
    # Ray gives a node a fixed 30 s to join the head; a loaded head can miss it ("The current
    # node timed out during startup"): a start that failed that soon is tried again.
    ((rc != 0 && SECONDS - started < RAY_JOIN_RETRY_S && try < RAY_JOIN_TRIES)) || break
    sweeps_log "the Ray worker did not join (rc $rc, try $try of $RAY_JOIN_TRIES): again"
    ray_cleanup
  done
  sweeps_log "the Ray worker exited (rc $rc)"
  return "$rc"
}

# ray_cleanup: stop this job's Ray processes on this node, and nothing else (idempotent).
ray_cleanup() {
  [[ -n $RAY_TAG ]] || return 0
  local i pids
  if [[ -n $RAY_PID ]] && kill -0 "$RAY_PID" 2>/dev/null; then
    kill -TERM "$RAY_PID" 2>/dev/null
    for ((i = 0; i < 30; i++)); do
      kill -0 "$RAY_PID" 2>/dev/null || break
      sleep 0.1
    done
  fi
  pids=$(grep -lzxF "SWEEPS_RAY_TAG=$RAY_TAG" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $pids 2>/dev/null
  fi
  rm -rf "$RAY_TEMP"
  slot_release
  RAY_TAG=""
}

# The job's exit trap: the driver, the other nodes' Ray, the worker array, this node's Ray.
sweeps_cleanup() {
  if [[ -n $DRIVER_PID ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill -KILL "$DRIVER_PID" 2>/dev/null
  fi
  if [[ -n $WORKERS_JOB ]]; then
    sweeps_log "cancelling the worker jobs ($WORKERS_JOB)"
    scancel "$WORKERS_JOB" 2>/dev/null
    WORKERS_JOB=""
  fi
  [[ -n $ADDRESS_FILE ]] && rm -f "$ADDRESS_FILE"
  if [[ -n $RAY_SRUN_PID ]]; then  # srun passes USR2 on to the other nodes' ray_worker
    kill -USR2 "$RAY_SRUN_PID" 2>/dev/null
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$RAY_SRUN_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -TERM "$RAY_SRUN_PID" 2>/dev/null
    RAY_SRUN_PID=""
  fi
  ray_cleanup
  [[ -n $TOKEN_FILE ]] && rm -f "$TOKEN_FILE"
  TOKEN_FILE=""
}

# A signal asks the driver to save the sweep's state and stop (Ray Tune's SIGINT handler);
# USR1, the pre-timeout signal, then requeues the job (sweeps_finish).
sweeps_on_signal() {
  SWEEPS_STOP=$1
  if [[ -z $DRIVER_PID ]]; then
    sweeps_log "got SIG$1 while no sweep driver runs"
    [[ $1 == USR1 ]] && return 0  # still starting: the driver is skipped, the job requeued
    exit 143
  fi
  sweeps_log "got SIG$1: asking the sweep driver to save its state and stop"
  kill -INT "$DRIVER_PID" 2>/dev/null
  return 0
}

# sweeps_trap_signals: the batch shell's traps (sbatch --signal=B:USR1@N signals only it).
sweeps_trap_signals() {
  trap sweeps_cleanup EXIT
  trap 'sweeps_on_signal USR1' USR1
  trap 'sweeps_on_signal TERM' TERM
  trap 'sweeps_on_signal INT' INT
}

# run_driver COMMAND...: run the sweep driver and wait for it; sets DRIVER_RC. Once a signal
# came, SIGINT is repeated every 5 s: a background job starts with SIGINT ignored, so the
# driver hears it only while Ray Tune's handler is installed (during the sweep itself).
run_driver() {
  if [[ -n $SWEEPS_STOP ]]; then
    DRIVER_RC=130
    return
  fi
  "$@" &
  DRIVER_PID=$!
  local ticks=0
  while kill -0 "$DRIVER_PID" 2>/dev/null; do
    sleep 1 &
    wait $!
    if [[ -n $SWEEPS_STOP ]] && ((++ticks % 5 == 0)); then
      kill -INT "$DRIVER_PID" 2>/dev/null
    fi
  done
  wait "$DRIVER_PID"
  DRIVER_RC=$?
  DRIVER_PID=""
  sweeps_log "the sweep driver exited with $DRIVER_RC"
}

# sweeps_finish MAX_RESTARTS RESUME_HINT: after the pre-timeout signal stopped an unfinished
# sweep, requeue this job (its next start resumes the sweep), at most MAX_RESTARTS times.
sweeps_finish() {
  local max=$1 hint=$2 restarts=${SLURM_RESTART_COUNT:-0}
  if [[ $SWEEPS_STOP == USR1 ]] && ((DRIVER_RC > 128)); then
    if ((restarts < max)); then
      sweeps_cleanup  # free this node before the job comes back
      sweeps_log "requeueing job $SLURM_JOB_ID (restart $((restarts + 1)) of at most $max);" \
        "its next start resumes the sweep"
      if scontrol requeue "$SLURM_JOB_ID"; then
        exit 0
      fi
      sweeps_log "error: scontrol requeue failed; resume with: $hint"
    else
      sweeps_log "not requeueing: restarted $restarts times already (max $max);" \
        "resume with: $hint"
    fi
  fi
  exit "$DRIVER_RC"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then  # run as a script: a Ray worker node
  set -uo pipefail
  case ${1-} in
    worker) ray_worker "$2" "${3:-$((${SLURM_PROCID:-0} + 1))}" ;;
    *)
      echo "usage: bash ray.sh worker ADDRESS|ADDRESS_FILE [NODE_INDEX]" >&2
      exit 2
      ;;
  esac
fi
