/* The MPI constants and extensions that the mpi crate does not expose: MPI_IN_PLACE (its value
 * differs between MPI libraries) and Open MPI's CUDA-awareness query. Compiled by build.rs. */
#include <mpi.h>
#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h>
#endif

void *qwen3_mpi_in_place(void) { return MPI_IN_PLACE; }

/* 1: this MPI library moves device memory; 0: it does not; -1: it cannot say.
 * Asked at run time: the library on the machine that runs the job (say a CUDA-aware build
 * under LD_LIBRARY_PATH) need not be the one whose headers this was compiled against. */
int qwen3_mpi_cuda_support(void) {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
    return MPIX_Query_cuda_support();
#else
    return -1;
#endif
}
