/* Dense C += A * B on SIZE x SIZE doubles, i-k-j loop order (unit stride inner loop), ITERS times.
 * Entries are small integers, so the checksum is exact whatever the thread count. */
#include "common.h"

int main(int argc, char **argv) {
    long n, iters;
    parse_args(argc, argv, 1, 100000L, &n, &iters);
    double *A = xmalloc(n * n, sizeof *A), *B = xmalloc(n * n, sizeof *B), *C = xmalloc(n * n, sizeof *C);

#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++)
        for (long j = 0; j < n; j++) {
            A[i * n + j] = (double)((3 * i + j) % 11 - 5);
            B[i * n + j] = (double)((i + 2 * j) % 13 - 6);
            C[i * n + j] = 0.0;
        }

    double t0 = omp_get_wtime();
    for (long it = 0; it < iters; it++) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++)
            for (long k = 0; k < n; k++) {
                const double aik = A[i * n + k];
                for (long j = 0; j < n; j++) C[i * n + j] += aik * B[k * n + j];
            }
    }
    double t = omp_get_wtime() - t0;

    double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (long i = 0; i < n * n; i++) sum += C[i];

    report("matmul", n, iters, t, 2.0 * n * n * n * iters, 0.0, sum);
    free(A);
    free(B);
    free(C);
    return 0;
}
