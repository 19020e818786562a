/* Direct O(N^2) gravitational N-body: ITERS steps of softened forces plus an Euler update over SIZE bodies.
 * Counts the conventional 20 flops per pairwise interaction. */
#include <math.h>

#include "common.h"

#define DT 0.001
#define EPS2 0.01

int main(int argc, char **argv) {
    long n, iters;
    parse_args(argc, argv, 1, 10000000L, &n, &iters);
    double *x = xmalloc(n, sizeof *x), *y = xmalloc(n, sizeof *y), *z = xmalloc(n, sizeof *z);
    double *vx = xmalloc(n, sizeof *vx), *vy = xmalloc(n, sizeof *vy), *vz = xmalloc(n, sizeof *vz);
    double *m = xmalloc(n, sizeof *m);

#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        x[i] = (double)(i * 37 % 101) / 101.0;
        y[i] = (double)(i * 53 % 103) / 103.0;
        z[i] = (double)(i * 71 % 107) / 107.0;
        vx[i] = vy[i] = vz[i] = 0.0;
        m[i] = 1.0 + (double)(i % 3);
    }

    double t0 = omp_get_wtime();
    for (long it = 0; it < iters; it++) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) {
            double ax = 0.0, ay = 0.0, az = 0.0;
#pragma omp simd reduction(+ : ax, ay, az)
            for (long j = 0; j < n; j++) { /* j == i adds nothing: its distance vector is zero */
                double dx = x[j] - x[i], dy = y[j] - y[i], dz = z[j] - z[i];
                double inv = 1.0 / sqrt(dx * dx + dy * dy + dz * dz + EPS2);
                double s = m[j] * inv * inv * inv;
                ax += s * dx;
                ay += s * dy;
                az += s * dz;
            }
            vx[i] += DT * ax;
            vy[i] += DT * ay;
            vz[i] += DT * az;
        }
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) {
            x[i] += DT * vx[i];
            y[i] += DT * vy[i];
            z[i] += DT * vz[i];
        }
    }
    double t = omp_get_wtime() - t0;

    double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (long i = 0; i < n; i++) sum += x[i] + y[i] + z[i] + vx[i] + vy[i] + vz[i];

    report("nbody", n, iters, t, 20.0 * n * n * iters, 0.0, sum);
    free(x);
    free(y);
    free(z);
    free(vx);
    free(vy);
    free(vz);
    free(m);
    return 0;
}
