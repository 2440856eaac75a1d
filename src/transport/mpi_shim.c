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

/* MPI errors on MPI_COMM_WORLD and every communicator duplicated from it afterwards go to
 * `on_error` (the error's text and code) instead of ending the process inside MPI, so that the
 * job can say which rank failed and mark its trace before aborting. `on_error` must not return;
 * if it does, the job is aborted here. */
static void (*qwen3_on_error)(const char *text, int code) = 0;

static void qwen3_error_handler(MPI_Comm *comm, int *code, ...) {
    char text[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    (void)comm;
    if (MPI_Error_string(*code, text, &len) != MPI_SUCCESS) len = 0;
    text[len] = '\0';
    if (qwen3_on_error) qwen3_on_error(text, *code);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

int qwen3_mpi_set_error_callback(void (*on_error)(const char *text, int code)) {
    MPI_Errhandler handler;
    int rc = MPI_Comm_create_errhandler(qwen3_error_handler, &handler);
    if (rc != MPI_SUCCESS) return rc;
    qwen3_on_error = on_error;
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, handler);
}
