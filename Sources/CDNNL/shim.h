// oneDNN (Debian: libdnnl-dev, 2.6): direct convolutions for the CPU backend. Its
// OpenMP runtime takes its thread count from the calling thread (omp_set_num_threads).
#include <dnnl.h>
void omp_set_num_threads(int);
