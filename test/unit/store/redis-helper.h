/* redis-helper.h - starts and stops a throwaway redis-server on a free loopback port for the
 * store tests (data in a temporary directory, no persistence). */
#ifndef SM_TEST_REDIS_HELPER_H
#define SM_TEST_REDIS_HELPER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct test_redis {
  pid_t pid;
  int port;
  char dir[64];
} test_redis;

static int th_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    abort();
  close(fd);
  return ntohs(a.sin_port);
}

static int th_can_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

/* Starts redis-server (password: NULL for none) on r->port (0: pick a free one). */
static void th_redis_start(test_redis *r, const char *password) {
  if (r->port == 0)
    r->port = th_free_port();
  if (r->dir[0] == '\0') {
    snprintf(r->dir, sizeof(r->dir), "/tmp/sm-redis-XXXXXX");
    if (mkdtemp(r->dir) == NULL)
      abort();
  }
  char port[16];
  snprintf(port, sizeof(port), "%d", r->port);
  r->pid = fork();
  if (r->pid == 0) {
    const char *argv[20] = {"redis-server", "--port",     port,      "--bind",
                            "127.0.0.1",    "--save",     "",        "--appendonly",
                            "no",           "--dir",      r->dir,    "--daemonize",
                            "no",           "--loglevel", "warning", "--enable-debug-command",
                            "yes"};
    int n = 17;
    if (password) {
      argv[n++] = "--requirepass";
      argv[n++] = password;
    }
    argv[n] = NULL;
    execvp("redis-server", (char **)argv);
    _exit(127);
  }
  for (int i = 0; i < 500 && !th_can_connect(r->port); i++)
    usleep(10000);
  if (!th_can_connect(r->port)) {
    fprintf(stderr, "redis-server did not start\n");
    abort();
  }
}

/* Kills redis-server (SIGKILL) and waits for it. */
static void th_redis_kill(test_redis *r) {
  if (r->pid > 0) {
    kill(r->pid, SIGKILL);
    waitpid(r->pid, NULL, 0);
    r->pid = 0;
  }
}

/* Stops redis and removes its directory. */
static void th_redis_stop(test_redis *r) {
  th_redis_kill(r);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", r->dir);
}

#endif
