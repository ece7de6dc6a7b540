/* openapi.h - docs/openapi.json (the OpenAPI 3 description of the admin API), compiled in at
 * build time (embed.py writes openapi_json.c), served at GET /api/openapi.json. */
#ifndef SM_ADMIN_OPENAPI_H
#define SM_ADMIN_OPENAPI_H

#include <stddef.h>

extern const char admin_openapi_json[];     /* the document, NUL-terminated */
extern const size_t admin_openapi_json_len; /* its bytes, without the NUL */

#endif
