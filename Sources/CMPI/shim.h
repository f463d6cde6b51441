// Open MPI (Debian: libopenmpi-dev). MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ... are macros
// over global structs that Swift cannot import; these functions return them.
#include <mpi.h>

static inline MPI_Comm loom_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype loom_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype loom_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Op loom_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Status *loom_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Comm loom_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline void *loom_mpi_in_place(void) { return MPI_IN_PLACE; }
