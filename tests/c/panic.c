/* No panic crosses into C: with BLOCKJOBINFO_TEST_PANIC=export (debug builds), every bji_* call panics inside
 * the library. Each must return its failure value with the panic's text as the last error, and the program
 * goes on. Prints one line per call, then "survived". */
#include <stdio.h>
#include <string.h>

#include "blockjobinfo.h"

static int caught(const char *what, int failed)
{
    const char *e = bji_last_error();
    printf("%s failed=%d error=%s\n", what, failed, e);
    return failed && strstr(e, "internal error: panic in blockjobinfo") != NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: panic SOCKET\n");
        return 2;
    }
    virDomainBlockJobInfo info;
    int ok = 1;
    ok &= caught("translate", bji_translate_reply("{\"return\": []}", "j", &info, 0) == -1);
    ok &= caught("open", bji_open_qmp(argv[1], 0) == NULL);
    ok &= caught("set_source", bji_dropin_set_source("native") == -1);
    ok &= caught("grace", bji_set_no_ready_grace(NULL, 0) == -1);
    printf("survived ok=%d\n", ok);
    return ok ? 0 : 1;
}
