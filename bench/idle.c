/* A process that never calls blockjobinfo: prints its resident set size in KiB, for the cost of preloading. */
#include <stdio.h>
#include <string.h>

int main(void)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            fputs(line + 6, stdout);
    return 0;
}
