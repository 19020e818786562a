/* Jacobi iteration of the 5-point Laplace stencil on a SIZE x SIZE grid with fixed boundary values.
 * Counts 4 flops per interior point and iteration. */
#include "common.h"

int main(int argc, char **argv) {
    long n, iters;
    parse_args(argc, argv, 3, 100000L, &n, &iters);
    double *u = xmalloc(n * n, sizeof *u), *v = xmalloc(n * n, sizeof *v);

#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++)
        for (long j = 0; j < n; j++) u[i * n + j] = v[i * n + j] = (double)((7 * i + 3 * j) % 10);

    double t0 = omp_get_wtime();
    for (long it = 0; it < iters; it++) {
#pragma omp parallel for schedule(static)
        for (long i = 1; i < n - 1; i++)
            for (long j = 1; j < n - 1; j++)
                v[i * n + j] = 0.25 * (u[(i - 1) * n + j] + u[(i + 1) * n + j] + u[i * n + j - 1] + u[i * n + j + 1]);
        double *tmp = u;
        u = v;
        v = tmp;
    }
    double t = omp_get_wtime() - t0;

    double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (long i = 0; i < n * n; i++) sum += u[i];

    report("jacobi2d", n, iters, t, 4.0 * (n - 2) * (n - 2) * iters, 0.0, sum);
    free(u);
    free(v);
    return 0;
}
