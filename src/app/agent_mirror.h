/* agent_mirror.h - the registry mirrored into the store's agent records, with a time to live,
 * so that another process (another manager instance, an operator's script) sees which agents
 * are connected and to which instance.
 *
 * Writes are coalesced: an agent's record is written when it registers, at most once per
 * AGENT_MIRROR_MIN_MS while it changes, and at least once per ttl/3 to keep it alive; it is
 * deleted (only if this instance still owns it) when the agent leaves. A record of a manager
 * that died expires after the ttl. While the store is away writes are skipped and caught up.
 */
#ifndef SM_APP_AGENT_MIRROR_H
#define SM_APP_AGENT_MIRROR_H

#include "core/registry.h"
#include "store/store.h"
#include "util/err.h"

#include <uv.h>

typedef struct agent_mirror agent_mirror;

/* Creates the mirror and starts its flush timer. ttl_s: record lifetime (>= 3 s). Returns 0,
 * SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int agent_mirror_create(uv_loop_t *loop, store *st, agent_registry *reg,
                                      const char *instance, double ttl_s, agent_mirror **out);

/* Registry events (forward them from the registry's listener). */
void agent_mirror_on_register(agent_mirror *m, agent *a);
void agent_mirror_on_update(agent_mirror *m, agent *a);
void agent_mirror_on_unregister(agent_mirror *m, agent *a);

/* Records written and deleted since creation (tests, status). */
void agent_mirror_counts(const agent_mirror *m, uint64_t *puts, uint64_t *dels);

/* Stops the mirror; it is freed once its timer closed and its store operations called back
 * (close the store after this). NULL is fine. */
void agent_mirror_close(agent_mirror *m);

#endif
