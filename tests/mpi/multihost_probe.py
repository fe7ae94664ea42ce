"""Run under mpirun: where did each rank run? Rank 0 writes a JSON list, one entry per rank:
hostname, MPI processor name, the size of its COMM_TYPE_SHARED group (ranks on its node),
the files in its /dev/shm, the CPUs it may run on, and a 1 MiB Allreduce checked for the sum."""

import json
import os
import socket
import sys

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
buf = np.full(1 << 18, comm.rank + 1, dtype=np.float32)  # 1 MiB
out = np.empty_like(buf)
comm.Allreduce(buf, out)
me = {
    "rank": comm.rank,
    "hostname": socket.gethostname(),
    "processor": MPI.Get_processor_name(),
    "node_size": node.Get_size(),
    "node_rank": node.Get_rank(),
    "allreduce_ok": bool(np.all(out == comm.size * (comm.size + 1) / 2)),
    "shm": sorted(os.listdir("/dev/shm")),
    "pid": os.getpid(),
    "cpus": sorted(os.sched_getaffinity(0)),
}
everything = comm.gather(me, root=0)
if comm.rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(everything, f, indent=1)
