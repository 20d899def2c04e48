/* backend_cuda_none.c - stands in for the CUDA backend in builds without nvcc, so that
 * `--device cuda` falls back to the CPU with a clear reason. */
#include "../backend.h"

ts_backend *ts_backend_cuda_create(int device, int fp32, ts_error *err)
{
    (void)device;
    (void)fp32;
    ts_fail(err, TS_ERR_UNSUPPORTED, "this build has no CUDA backend (built without nvcc, or "
            "with CUDA=0 as the sanitizer build is)");
    return NULL;
}
