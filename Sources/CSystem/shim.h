// libc pieces Swift's Glibc module does not export (malloc tuning).
#include <malloc.h>
