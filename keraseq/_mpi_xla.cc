// keraseq: MPI Allreduce (sum of one flat float32 buffer) as an XLA:CPU custom-call target, so
// the whole truncated-BPTT window loop -- forward, backward, Allreduce, optimizer update -- stays
// ONE XLA program under MPI (no host callback, no Python, no GIL, no extra XLA launches).
//
// Called from TF with tensorflow.compiler.tf2xla.ops.gen_xla_ops.xla_custom_call_v2(
//     call_target_name="keraseq_mpi_allreduce_f32", has_side_effect=True,
//     backend_config="<MPI_Comm handle (mpi4py MPI._handleof(comm))> <element count>").
// XlaCustomCallV2 uses API_VERSION_STATUS_RETURNING_UNIFIED, whose CPU signature is
//     void f(void* out, const void** in, const char* opaque, size_t opaque_len, XlaCustomCallStatus*)
// with `out` the output buffer itself when there is a single (non-tuple) result.
// MPI must already be initialised (mpi4py initialises it on `from mpi4py import MPI`).
// Only header needed from TensorFlow: xla/service/custom_call_target_registry.h (std only);
// the registry itself lives in libtensorflow_cc.so.2 (already loaded by `import tensorflow`).
#include <mpi.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "xla/service/custom_call_target_registry.h"

namespace {

extern "C" void keraseq_mpi_allreduce_f32(void* out, const void** in, const char* opaque,
                                          size_t opaque_len, void* /*XlaCustomCallStatus*/) {
  char text[64];
  size_t k = opaque_len < sizeof(text) - 1 ? opaque_len : sizeof(text) - 1;
  std::memcpy(text, opaque, k);
  text[k] = 0;
  char* end = nullptr;
  const uintptr_t handle = static_cast<uintptr_t>(std::strtoull(text, &end, 10));
  const int n = static_cast<int>(std::strtol(end, nullptr, 10));
  MPI_Comm comm;
  // MPI_Comm is a pointer in Open MPI and an int in MPICH; copy the low bytes either way.
  std::memcpy(&comm, &handle, sizeof(MPI_Comm));
  // Default error handler MPI_ERRORS_ARE_FATAL: a failed collective aborts every rank.
  MPI_Allreduce(in[0], out, n, MPI_FLOAT, MPI_SUM, comm);
}

}  // namespace

XLA_CPU_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM("keraseq_mpi_allreduce_f32",
                                             keraseq_mpi_allreduce_f32);

// Sanity probe for the loader: 1 when the libmpi this library linked against is the one that
// mpi4py initialised (a different libmpi in the same process would report 0).
extern "C" int keraseq_mpi_initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag;
}
