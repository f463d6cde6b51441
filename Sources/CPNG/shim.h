// libpng (Debian: libpng-dev): PNG image folders for image datasets.
#include <png.h>
