/* perfscale's launcher: runs a command as a child of this tiny process and reports its resource usage.
 *
 * Why: at exec() Linux records the old address space's peak RSS into the process's ru_maxrss, so a command
 * started straight from a 200 MB Python worker "peaks" at 200 MB however little it uses. Forked from this
 * launcher it starts from a few hundred KiB, and its ru_maxrss is its own.
 *
 * usage: launch REPORT_FD PARENT_PID PROGRAM ARGV0 [ARG...]
 * Runs PROGRAM (a path: no PATH search) with argv ARGV0 ARG..., waits for it, and writes `name: value`
 * lines to REPORT_FD: its wait status, the errno of a failed exec (0 if it ran), wall time from fork to
 * exit, rusage and /proc/<pid>/io (-1 where unreadable). If PARENT_PID dies, or on SIGTERM/SIGHUP, the
 * whole process group (this launcher, the command and its descendants) is killed. PARENT_PID 0 means the
 * process that exec'd this launcher, whatever its pid: that is how a second launcher runs under a wrapper
 * (perf stat, papi_run) that the first one started, launch -> perf -> launch -> command, so that the inner
 * report covers the command alone. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

static void kill_group(int sig) {
    (void)sig;
    kill(0, SIGKILL);
}

static void read_io(pid_t pid, long long *rd, long long *wr) {
    char path[64], line[128];
    *rd = *wr = -1;
    snprintf(path, sizeof path, "/proc/%d/io", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    while (fgets(line, sizeof line, f) != NULL) {
        sscanf(line, "read_bytes: %lld", rd);
        sscanf(line, "write_bytes: %lld", wr);
    }
    fclose(f);
}

static long long elapsed_ns(const struct timespec *a, const struct timespec *b) {
    return (long long)(b->tv_sec - a->tv_sec) * 1000000000LL + (b->tv_nsec - a->tv_nsec);
}

static long long usec(struct timeval t) { return (long long)t.tv_sec * 1000000LL + t.tv_usec; }

int main(int argc, char **argv) {
    pid_t started_by = getppid(); /* first thing: the parent that exec'd us, for PARENT_PID 0 */
    if (argc < 5) {
        fprintf(stderr, "usage: %s REPORT_FD PARENT_PID PROGRAM ARGV0 [ARG...]\n", argv[0]);
        return 2;
    }
    int report_fd = atoi(argv[1]);
    FILE *report = fdopen(report_fd, "w");
    if (report == NULL) {
        perror("launch: report fd");
        return 2;
    }
    signal(SIGTERM, kill_group);
    signal(SIGHUP, kill_group);
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
    pid_t parent = (pid_t)atol(argv[2]);
    if (parent == 0) parent = started_by; /* a wrapper such as perf started us (see command.py) */
    if (getppid() != parent) kill_group(0); /* the parent died before prctl */

    int pipefd[2]; /* the child writes its exec errno here; a successful exec closes it (O_CLOEXEC) */
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        perror("launch: pipe");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t child = fork();
    if (child < 0) {
        perror("launch: fork");
        return 2;
    }
    if (child == 0) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        close(report_fd);
        execv(argv[3], argv + 4);
        int e = errno;
        if (write(pipefd[1], &e, sizeof e) < 0) _exit(126);
        _exit(127);
    }
    close(pipefd[1]);
    int exec_errno = 0;
    if (read(pipefd[0], &exec_errno, sizeof exec_errno) != (ssize_t)sizeof exec_errno) exec_errno = 0;
    close(pipefd[0]);

    siginfo_t info; /* wait without reaping: /proc/<pid>/io of the zombie still covers the whole run */
    while (waitid(P_PID, child, &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long rd, wr;
    read_io(child, &rd, &wr);
    int status = 0;
    struct rusage ru;
    while (wait4(child, &status, 0, &ru) < 0 && errno == EINTR) {
    }
    fprintf(report, "status: %d\nexec_errno: %d\nwall_ns: %lld\n", status, exec_errno, elapsed_ns(&t0, &t1));
    fprintf(report, "utime_us: %lld\nstime_us: %lld\nmaxrss_kib: %ld\n", usec(ru.ru_utime), usec(ru.ru_stime),
            ru.ru_maxrss);
    fprintf(report, "minflt: %ld\nmajflt: %ld\nnvcsw: %ld\nnivcsw: %ld\n", ru.ru_minflt, ru.ru_majflt, ru.ru_nvcsw,
            ru.ru_nivcsw);
    fprintf(report, "read_bytes: %lld\nwrite_bytes: %lld\n", rd, wr);
    return fclose(report) == 0 ? 0 : 2;
}
