/* The library's environment is read once, at load, and not at all under AT_SECURE.
 *
 *   environment SOCKET [setenv]
 *
 * With "setenv", sets BLOCKJOBINFO_LOG=debug before its first call into the library. Then opens SOCKET (the
 * library logs "QMP connected" at debug), closes it, and checks bji_dropin_set_source's errors. Prints
 * "secure=N" (the process's AT_SECURE) on stdout; the library's log goes to stderr. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "blockjobinfo.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: environment SOCKET [setenv]\n");
        return 2;
    }
    printf("secure=%lu\n", getauxval(AT_SECURE));
    if (argc > 2 && strcmp(argv[2], "setenv") == 0)
        setenv("BLOCKJOBINFO_LOG", "debug", 1);
    bji_source *src = bji_open_qmp(argv[1], 0);
    if (!src) {
        fprintf(stderr, "error: %s\n", bji_last_error());
        return 1;
    }
    bji_close(src);
    if (bji_dropin_set_source("bogus") != -1 || !strstr(bji_last_error(), "unknown source \"bogus\"")) {
        fprintf(stderr, "bji_dropin_set_source(\"bogus\") was not refused: %s\n", bji_last_error());
        return 1;
    }
    if (bji_dropin_set_source(NULL) != -1 || bji_dropin_set_source("native") != 0) {
        fprintf(stderr, "bji_dropin_set_source: %s\n", bji_last_error());
        return 1;
    }
    return 0;
}
