/* perfscale's PAPI wrapper: counts PAPI events over the whole run of another command.
 *
 * usage: papi_run OUTPUT EVENT... -- PROGRAM ARGV0 [ARG...]
 * Forks PROGRAM (a path: no PATH search) with argv ARGV0 ARG..., holds it before exec while an event set is
 * attached to it (PAPI_attach) with inheritance on (PAPI_INHERIT_ALL, so every thread and child process it
 * starts is counted too), releases it, waits for it and writes to OUTPUT one line per event,
 * `count VALUE EVENT`, then `status WAIT_STATUS`. Counting starts before the exec, so the few instructions
 * between the release and the exec are counted as well.
 * When PAPI cannot count the events, OUTPUT gets one `error WHAT: WHY` line and the command never runs (exit
 * status 3). Otherwise the exit status is the command's (128+N when it was killed by signal N). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <papi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAPI_RUN_FAILED 3

static FILE *out;

static int fail(const char *what, const char *name, int code) {
    fprintf(out, "error %s%s%s: %s\n", what, name ? " " : "", name ? name : "", PAPI_strerror(code));
    fclose(out);
    return PAPI_RUN_FAILED;
}

static int exit_code(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

/* Block until the parent writes one byte (or gives up and closes the pipe), then exec. */
static void child(int release_fd, char **argv) {
    char go = 0;
    if (read(release_fd, &go, 1) != 1) _exit(127);
    close(release_fd);
    execv(argv[0], argv + 1);
    fprintf(stderr, "papi_run: cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static void abandon(pid_t pid, int release_fd) {
    close(release_fd); /* the child's read() returns 0 and it exits without running the command */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
    int sep = 2;
    while (sep < argc && strcmp(argv[sep], "--") != 0) sep++;
    int nevents = sep - 2;
    if (argc < 4 || nevents < 1 || argc - sep < 3) {
        fprintf(stderr, "usage: %s OUTPUT EVENT... -- PROGRAM ARGV0 [ARG...]\n", argv[0]);
        return 2;
    }
    out = fopen(argv[1], "w");
    if (out == NULL) {
        perror("papi_run: output");
        return 2;
    }
    int rc = PAPI_library_init(PAPI_VER_CURRENT);
    if (rc != PAPI_VER_CURRENT) return fail("PAPI_library_init", NULL, rc > 0 ? PAPI_EINVAL : rc);

    int codes[nevents];
    for (int i = 0; i < nevents; i++) {
        rc = PAPI_event_name_to_code(argv[2 + i], &codes[i]);
        if (rc != PAPI_OK) return fail("event", argv[2 + i], rc);
    }
    int set = PAPI_NULL;
    if ((rc = PAPI_create_eventset(&set)) != PAPI_OK) return fail("PAPI_create_eventset", NULL, rc);
    int cidx = PAPI_get_event_component(codes[0]);
    if ((rc = PAPI_assign_eventset_component(set, cidx)) != PAPI_OK)
        return fail("PAPI_assign_eventset_component", NULL, rc);
    PAPI_option_t opt;
    memset(&opt, 0, sizeof opt);
    opt.inherit.eventset = set;
    opt.inherit.inherit = PAPI_INHERIT_ALL;
    if ((rc = PAPI_set_opt(PAPI_INHERIT, &opt)) != PAPI_OK) return fail("PAPI_set_opt(PAPI_INHERIT)", NULL, rc);

    int release[2];
    if (pipe2(release, O_CLOEXEC) != 0) {
        perror("papi_run: pipe");
        return 2;
    }
    fflush(out);
    pid_t pid = fork();
    if (pid < 0) {
        perror("papi_run: fork");
        return 2;
    }
    if (pid == 0) {
        fclose(out);
        close(release[1]);
        child(release[0], argv + sep + 1);
    }
    close(release[0]);
    if ((rc = PAPI_attach(set, (unsigned long)pid)) != PAPI_OK) {
        abandon(pid, release[1]);
        return fail("PAPI_attach", NULL, rc);
    }
    for (int i = 0; i < nevents; i++) {
        if ((rc = PAPI_add_event(set, codes[i])) != PAPI_OK) {
            abandon(pid, release[1]);
            return fail("PAPI_add_event", argv[2 + i], rc);
        }
    }
    if ((rc = PAPI_start(set)) != PAPI_OK) {
        abandon(pid, release[1]);
        return fail("PAPI_start", NULL, rc);
    }
    char go = 1;
    if (write(release[1], &go, 1) != 1) {
        abandon(pid, release[1]);
        return fail("release", NULL, PAPI_ESYS);
    }
    close(release[1]);

    siginfo_t info; /* wait without reaping, so the counters are read while the task still exists */
    while (waitid(P_PID, pid, &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
    }
    long long values[nevents];
    rc = PAPI_stop(set, values);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (rc != PAPI_OK) {
        fail("PAPI_stop", NULL, rc);
        return exit_code(status) ? exit_code(status) : PAPI_RUN_FAILED;
    }
    for (int i = 0; i < nevents; i++) fprintf(out, "count %lld %s\n", values[i], argv[2 + i]);
    fprintf(out, "status %d\n", status);
    if (fclose(out) != 0) return 2;
    return exit_code(status);
}
