/* Shared helpers of the perfscale kernel suite: argument checks, allocation and figure-of-merit output.
 * Every kernel prints the same `name: value` lines so one set of FOM patterns reads them all. */
#ifndef PERFSCALE_KERNEL_COMMON_H
#define PERFSCALE_KERNEL_COMMON_H

#include <errno.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A decimal integer in [1, max], or 0 when `s` is not one. */
static long parse_count(const char *s, long max) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > max) return 0;
    return v;
}

/* Read SIZE and ITERS from the command line, or print the usage and exit with status 2. */
static void parse_args(int argc, char **argv, long min_size, long max_size, long *size, long *iters) {
    *size = *iters = 0;
    if (argc == 3) {
        *size = parse_count(argv[1], max_size);
        *iters = parse_count(argv[2], 1000000000L);
    }
    if (*size < min_size || *iters < 1) {
        fprintf(stderr, "usage: %s SIZE ITERS   (SIZE: integer in [%ld, %ld], ITERS: integer >= 1)\n",
                argv[0], min_size, max_size);
        exit(2);
    }
}

/* malloc that checks for overflow and failure (exit status 1, not a crash, when memory runs out). */
static void *xmalloc(size_t count, size_t each) {
    void *p = count > SIZE_MAX / each ? NULL : malloc(count * each);
    if (p == NULL) {
        fprintf(stderr, "error: cannot allocate %zu x %zu bytes\n", count, each);
        exit(1);
    }
    return p;
}

/* splitmix64's finaliser: a cheap, well-mixed, reproducible pseudo-random function of an integer. */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Print the figures of merit; `bytes` <= 0 leaves out the bandwidth line. */
static void report(const char *kernel, long size, long iters, double time_s, double flops, double bytes,
                   double checksum) {
    double t = time_s > 0.0 ? time_s : 1e-9;
    printf("kernel: %s\n", kernel);
    printf("size: %ld\n", size);
    printf("iters: %ld\n", iters);
    printf("threads: %d\n", omp_get_max_threads());
    printf("time_s: %.6f\n", time_s);
    printf("gflops: %.3f\n", flops / t / 1e9);
    if (bytes > 0.0) printf("gbytes_per_s: %.3f\n", bytes / t / 1e9);
    printf("checksum: %.15e\n", checksum);
}

#endif
