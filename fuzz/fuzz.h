/* fuzz.h - helpers shared by the libFuzzer targets of fuzz/ (docs/testing.md): a cursor over
 * the input, the in-process program behind the admin and intake targets (loop, in-memory
 * store, registry, lifecycle), and the oracles every target applies to what the code answers.
 */
#ifndef SM_FUZZ_H
#define SM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A cursor over the input: fixed-size fields are taken from the front, 0 once it is empty. */
typedef struct fz_in {
  const uint8_t *p;
  size_t n;
} fz_in;

static inline uint8_t fz_u8(fz_in *in) {
  if (in->n == 0)
    return 0;
  in->n--;
  return *in->p++;
}

static inline uint16_t fz_u16(fz_in *in) {
  uint16_t hi = fz_u8(in);
  return (uint16_t)(hi << 8 | fz_u8(in));
}

/* Up to want bytes from the front (fewer at the end); *got is how many. */
static inline const uint8_t *fz_take(fz_in *in, size_t want, size_t *got) {
  const uint8_t *p = in->p;
  *got = want < in->n ? want : in->n;
  in->p += *got;
  in->n -= *got;
  return p;
}

/* The program the admin and intake targets run against: a loop with an in-memory store, an
 * agent registry and a started lifecycle, as in test/unit/admin/test-cmd-handlers.c. */
struct store;
struct agent_registry;
struct lifecycle;
typedef struct fz_world {
  uv_loop_t loop;
  struct store *store;
  struct agent_registry *reg;
  struct lifecycle *lc;
  void (*on_accepting)(void *ud, int accepting); /* lifecycle_config.on_accepting */
  void *ud;
} fz_world;

/* Creates the world (aborts on failure: that is a harness bug). */
void fz_world_open(fz_world *w);
/* Turns the loop n times without blocking. */
void fz_world_spin(fz_world *w, int n);
/* Closes everything and checks the loop is empty (aborts otherwise). */
void fz_world_close(fz_world *w);

/* Aborts (a crash libFuzzer reports) when text is not valid UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), only when FUZZ_STRICT_UTF8=1 is set: every JSON writer
 * must emit valid UTF-8 (issue 12, items 5 and 6). */
void fz_check_utf8(const char *what, const char *text, size_t len);

/* Aborts with a message: an oracle found a bug. */
void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Logs at debug level as JSON lines (exercising the log writer); the run script closes the
 * targets' stderr (-close_fd_mask=2) so the lines cost no terminal. */
void fz_log_setup(void);

#endif
