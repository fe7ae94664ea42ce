#!/usr/bin/env bash
# The commands of docs/guide/cluster.md that need neither Slurm nor GPUs, run on simulated hosts:
#
#   sudo .venv/bin/python tests/multihost/cluster.py run 2 -- bash tests/multihost/guide_commands.sh
#
# cluster.py runs this on host0 with PRTE_MCA_plm_ssh_agent pointing at its ssh stand-in; the
# commands themselves are the guide's, with the hosts called host0 and host1.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1   # as root (containers, CI)
# Simulation only: both "hosts" share this machine's cores; a rank that busy-polls would starve
# the other host's packet processing (see the troubleshooting list). Real nodes need no such flag.
export OMPI_MCA_mpi_yield_when_idle=1
W=${HOSTS_DIR:-$(mktemp -d)}
step() { echo; echo "### $*"; }
WHERE='import os, socket; from mpi4py import MPI; c = MPI.COMM_WORLD; l = c.Split_type(MPI.COMM_TYPE_SHARED); print(f"rank {c.rank}/{c.size} on {socket.gethostname()}: local rank {l.rank}/{l.size}, cpus {sorted(os.sched_getaffinity(0))}", flush=True)'

step "hostfile: one rank per node"
cat > "$W/hosts" <<'EOF'
host0 slots=1
host1 slots=1
EOF
mpirun --hostfile "$W/hosts" -np 2 python -c "$WHERE"

step "choosing the interface: by subnet, or by name"
mpirun --hostfile "$W/hosts" -np 2 --mca btl_tcp_if_include 10.213.7.0/24 \
    --prtemca oob_tcp_if_include 10.213.7.0/24 python -c "$WHERE"
mpirun --hostfile "$W/hosts" -np 2 --mca btl_tcp_if_include kqnet0 \
    --prtemca oob_tcp_if_include kqnet0 python -c "$WHERE"

step "cores: the default binds each rank to ONE core; give a rank its node's cores"
mpirun --hostfile "$W/hosts" -np 2 python -c "$WHERE"
mpirun --hostfile "$W/hosts" -np 2 --report-bindings python -c "$WHERE" 2>&1 | grep -a -E "bound|rank"
mpirun --hostfile "$W/hosts" -np 2 --map-by ppr:1:node:pe=2 python -c "$WHERE"
mpirun --hostfile "$W/hosts" -np 2 --bind-to none python -c "$WHERE"

step "several ranks per node (one per GPU): local ranks 0..k-1 on every node"
cat > "$W/hosts2" <<'EOF'
host0 slots=2
host1 slots=2
EOF
mpirun --hostfile "$W/hosts2" -np 4 --map-by ppr:2:node:pe=1 --display map python -c "$WHERE" \
    | grep -E "^rank|Data for node|Local rank"

step "environment: remote ranks get only what -x passes"
FOO=bar mpirun --hostfile "$W/hosts" -np 2 python -c 'import os, socket; print(socket.gethostname(), os.environ.get("FOO"))'
FOO=bar mpirun --hostfile "$W/hosts" -np 2 -x FOO python -c 'import os, socket; print(socket.gethostname(), os.environ.get("FOO"))'

step "the training template on 2 nodes"
REPO=$PWD
cd "$W" && mkdir -p out  # examples/mpi_train.py saves to ./out/mpi_model.keras
mpirun --hostfile "$W/hosts" -np 2 --bind-to none -x TF_CPP_MIN_LOG_LEVEL=3 \
    python "$REPO/examples/mpi_train.py" 2>&1 | grep -a -v -E "^(I0000|WARNING: All log)" | tail -3
echo "guide commands: all ran"
