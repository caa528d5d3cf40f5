/* A minimal inotify watcher for the change-notification test: the test's image is
 * FROM scratch, so this is built static. Prints "ready", then one line per event:
 * "<mask in hex>\t<watched path>\t<name or empty>". */
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fd = inotify_init1(0);
    if (fd < 0) {
        perror("inotify_init1");
        return 1;
    }
    /* Watch descriptors of a new inotify instance count up from 1 in order. */
    for (int i = 1; i < argc; i++) {
        if (inotify_add_watch(fd, argv[i], IN_ALL_EVENTS) != i) {
            perror(argv[i]);
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    char buf[65536] __attribute__((aligned(8)));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            return 1;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->wd >= 1 && e->wd < argc)
                printf("%x\t%s\t%s\n", e->mask, argv[e->wd], e->len ? e->name : "");
            fflush(stdout);
            p += sizeof *e + e->len;
        }
    }
}
