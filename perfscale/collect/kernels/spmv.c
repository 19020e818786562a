/* CSR sparse matrix-vector product y = A x, ITERS times. Row i of A has NNZ_ROW entries: a band at
 * columns i-4 .. i+3 (wrapping around) and 8 pseudo-random columns, so x is read both in and out of cache.
 * Entries are small integers, so the checksum is exact. Bytes counted: values, column indices, row
 * pointers, x and y once each (the minimum traffic). */
#include "common.h"

#define NNZ_ROW 16

int main(int argc, char **argv) {
    long n, iters;
    parse_args(argc, argv, 1, 200000000L, &n, &iters);
    const long nnz = n * NNZ_ROW;
    long *rowptr = xmalloc(n + 1, sizeof *rowptr);
    int32_t *col = xmalloc(nnz, sizeof *col);
    double *val = xmalloc(nnz, sizeof *val), *x = xmalloc(n, sizeof *x), *y = xmalloc(n, sizeof *y);

#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        rowptr[i] = i * NNZ_ROW;
        for (long k = 0; k < NNZ_ROW; k++) {
            long c = k < 8 ? ((i + k - 4) % n + n) % n : (long)(mix64((uint64_t)(i * NNZ_ROW + k)) % (uint64_t)n);
            col[i * NNZ_ROW + k] = (int32_t)c;
            val[i * NNZ_ROW + k] = (double)(k % 4 + 1);
        }
        x[i] = (double)(i % 5 + 1);
        y[i] = 0.0;
    }
    rowptr[n] = nnz;

    double t0 = omp_get_wtime();
    for (long it = 0; it < iters; it++) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) {
            double sum = 0.0;
            for (long p = rowptr[i]; p < rowptr[i + 1]; p++) sum += val[p] * x[col[p]];
            y[i] = sum;
        }
    }
    double t = omp_get_wtime() - t0;

    double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (long i = 0; i < n; i++) sum += y[i];

    double bytes = (12.0 * nnz + 24.0 * n) * iters;
    report("spmv", n, iters, t, 2.0 * nnz * iters, bytes, sum);
    free(rowptr);
    free(col);
    free(val);
    free(x);
    free(y);
    return 0;
}
