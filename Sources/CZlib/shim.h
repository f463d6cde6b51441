// zlib (Debian: zlib1g-dev): gzip reading for datasets, CRC-32 for checkpoints.
#include <zlib.h>
