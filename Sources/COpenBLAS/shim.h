// Thin shim over OpenBLAS's CBLAS (Debian: libopenblas-dev). pkg-config "openblas"
// supplies the include path (…/openblas-pthread/), where cblas.h also declares
// openblas_set_num_threads / openblas_get_num_threads.
#include <cblas.h>
