/* STREAM triad: a = b + s * c over SIZE doubles, ITERS times. Counts 24 bytes and 2 flops per element. */
#include "common.h"

int main(int argc, char **argv) {
    long n, iters;
    parse_args(argc, argv, 1, 4000000000L, &n, &iters);
    double *a = xmalloc(n, sizeof *a), *b = xmalloc(n, sizeof *b), *c = xmalloc(n, sizeof *c);
    const double s = 3.0;

#pragma omp parallel for schedule(static) /* first touch by the threads that use the data */
    for (long i = 0; i < n; i++) {
        a[i] = 0.0;
        b[i] = 1.0 + (double)(i % 10);
        c[i] = 0.5 * (double)(i % 7);
    }

    double t0 = omp_get_wtime();
    for (long it = 0; it < iters; it++) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) a[i] = b[i] + s * c[i];
    }
    double t = omp_get_wtime() - t0;

    double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (long i = 0; i < n; i++) sum += a[i];

    report("triad", n, iters, t, 2.0 * n * iters, 24.0 * n * iters, sum);
    free(a);
    free(b);
    free(c);
    return 0;
}
