/* agent_auth.h - agent tokens (AGENT_AUTH_TOKENS_FILE): agents send `authorization: Bearer
 * <token>` on their stream; a token is bound to one agent id or, written `*:token`, to any.
 *
 * Tokens are kept only as SHA-256 digests (a file may give them as `sha256:<hex>` so that it
 * holds no secret) and compared in constant time. Lookups go by agent id first, so a check
 * costs the same with 20,000 tokens as with one.
 */
#ifndef SM_GRPC_AGENT_AUTH_H
#define SM_GRPC_AGENT_AUTH_H

#include "util/err.h"
#include <stddef.h>

typedef struct agent_tokens agent_tokens;

/* Reads a tokens file: one `agent_id:token` or `*:token` per line, `#` comments and blank lines
 * allowed, a token either plain or `sha256:<64 hex digits>`. Returns 0, SM_ENOENT / SM_EIO (the
 * file), SM_EINVAL (a bad line: why names its number and the problem) or SM_ENOMEM. */
SM_MUST_CHECK int agent_tokens_load(const char *path, agent_tokens **out, char *why, size_t whylen);

/* Checks an `authorization` header value for agent_id (NULL: any agent, as for Ping). Returns 0
 * when allowed, SM_EAUTH when the header is missing, malformed or the token unknown, SM_EPERM
 * when the token belongs to another agent id. */
SM_MUST_CHECK int agent_tokens_check(const agent_tokens *t, const char *authorization,
                                     const char *agent_id);

/* Number of tokens loaded. */
size_t agent_tokens_count(const agent_tokens *t);

/* Frees t. NULL is fine. */
void agent_tokens_free(agent_tokens *t);

#endif
