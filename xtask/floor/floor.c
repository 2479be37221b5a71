/*
 * The benchmark's floor: the kernel work of starting a container, in a
 * straight line, with no checks, no records and no error messages. What a
 * step spends beyond this is the runtime's own cost.
 *
 *   floor LEVEL ROOTFS
 *   LEVEL 1: clone(2) into new uts, pid, mnt, net and ipc namespaces, exec /bin/true
 *         2: 1 + an overlay root (ROOTFS as its lower layer), pivot_root, a fresh /proc
 *         3: 2 + a cgroup (v1: memory, pids, cpu; v2: one group) joined before exec
 *
 * Built by `cargo xtask bench` with the C compiler; not part of any step.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int level;
static char base[128], upper[160], work[160], merged[160];
static char groups[3][160];
static int ngroups;
static int go[2]; /* the parent says "in your cgroup now" by closing it */

static int child(void *arg) {
    char byte;
    (void)arg;
    close(go[1]);
    read(go[0], &byte, 1);
    if (level >= 2) {
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
        chdir(merged);
        syscall(SYS_pivot_root, ".", ".");
        umount2(".", MNT_DETACH);
        chdir("/");
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
    execl("/bin/true", "true", (char *)NULL);
    return 127;
}

static void join(const char *group, int pid) {
    char path[200], text[16];
    snprintf(path, sizeof path, "%s/cgroup.procs", group);
    int fd = open(path, O_WRONLY);
    int n = snprintf(text, sizeof text, "%d", pid);
    write(fd, text, n);
    close(fd);
}

int main(int argc, char **argv) {
    static char stack[256 * 1024];
    if (argc != 3) {
        fprintf(stderr, "usage: floor LEVEL ROOTFS\n");
        return 2;
    }
    level = atoi(argv[1]);
    if (level >= 2) {
        char options[1024];
        snprintf(base, sizeof base, "/tmp/workshop-floor-%d", getpid());
        snprintf(upper, sizeof upper, "%s/upper", base);
        snprintf(work, sizeof work, "%s/work", base);
        snprintf(merged, sizeof merged, "%s/merged", base);
        mkdir(base, 0700);
        mkdir(upper, 0755);
        mkdir(work, 0700);
        mkdir(merged, 0755);
        snprintf(options, sizeof options, "lowerdir=%s,upperdir=%s,workdir=%s", argv[2], upper, work);
        mount("overlay", merged, "overlay", 0, options);
    }
    if (level >= 3) {
        const char *v1[] = {"memory", "pids", "cpu"};
        struct stat st;
        if (stat("/sys/fs/cgroup/memory", &st) == 0) {
            for (int i = 0; i < 3; i++)
                snprintf(groups[ngroups++], sizeof groups[0], "/sys/fs/cgroup/%s/workshop-floor-%d", v1[i], getpid());
        } else {
            snprintf(groups[ngroups++], sizeof groups[0], "/sys/fs/cgroup/workshop-floor-%d", getpid());
        }
        for (int i = 0; i < ngroups; i++)
            mkdir(groups[i], 0755);
    }
    pipe(go);
    int flags = CLONE_NEWUTS | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | SIGCHLD;
    int pid = clone(child, stack + sizeof stack, flags, NULL);
    for (int i = 0; i < ngroups; i++)
        join(groups[i], pid);
    close(go[0]);
    close(go[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    for (int i = 0; i < ngroups; i++)
        rmdir(groups[i]);
    if (level >= 2) {
        char path[200];
        umount2(merged, MNT_DETACH);
        snprintf(path, sizeof path, "%s/work", work); /* overlayfs makes work/work */
        rmdir(path);
        rmdir(work);
        rmdir(merged);
        rmdir(upper);
        rmdir(base);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
