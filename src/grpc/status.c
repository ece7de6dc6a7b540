/* status.c - gRPC status names, the SM_E* -> status table, grpc-message and grpc-timeout. */
#include "grpc/status.h"

#include "util/err.h"
#include "util/hex.h"

static const char *const status_names[GRPC_STATUS_COUNT] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

const char *grpc_status_name(int status) {
  return status >= 0 && status < GRPC_STATUS_COUNT ? status_names[status] : "UNKNOWN";
}

int grpc_status_from_err(int err) {
  switch (err) {
  case 0:
  case SM_ECLOSED:
    return GRPC_OK;
  case SM_EEXIST:
    return GRPC_ABORTED;
  case SM_ETIMEDOUT:
  case SM_ECANCELED:
  case SM_EUNAVAIL:
  case SM_EAGAIN:
    return GRPC_UNAVAILABLE;
  case SM_EAUTH:
    return GRPC_UNAUTHENTICATED;
  case SM_EPERM:
    return GRPC_PERMISSION_DENIED;
  case SM_ETOOBIG:
  case SM_ELIMIT:
  case SM_ENOMEM:
    return GRPC_RESOURCE_EXHAUSTED;
  case SM_EINVAL:
  case SM_EPARSE:
    return GRPC_INVALID_ARGUMENT;
  case SM_ENOENT:
    return GRPC_NOT_FOUND;
  case SM_EUNSUPPORTED:
    return GRPC_UNIMPLEMENTED;
  case SM_ESTATE:
    return GRPC_FAILED_PRECONDITION;
  default:
    return GRPC_INTERNAL;
  }
}

size_t grpc_percent_encode(const char *msg, char *out, size_t cap) {
  size_t n = 0;
  if (cap == 0)
    return 0;
  for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
    if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
      if (n + 1 >= cap)
        break;
      out[n++] = (char)*p;
    } else {
      if (n + 3 >= cap)
        break;
      out[n++] = '%';
      out[n++] = sm_hex_digit(*p >> 4, 1);
      out[n++] = sm_hex_digit(*p & 15u, 1);
    }
  }
  out[n] = '\0';
  return n;
}

size_t grpc_percent_decode(char *s, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    int hi, lo;
    if (s[i] == '%' && i + 2 < len && (hi = sm_hex_value((unsigned char)s[i + 1])) >= 0 &&
        (lo = sm_hex_value((unsigned char)s[i + 2])) >= 0) {
      s[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      s[o++] = s[i];
    }
  }
  if (o < len)
    s[o] = '\0';
  return o;
}

int grpc_timeout_parse(const char *v, size_t len, uint64_t *ms) {
  if (len < 2 || len > 9)
    return SM_EPARSE;
  uint64_t n = 0;
  for (size_t i = 0; i + 1 < len; i++) {
    if (v[i] < '0' || v[i] > '9')
      return SM_EPARSE;
    n = n * 10 + (uint64_t)(v[i] - '0');
  }
  /* n < 10^8, so none of these products overflow */
  switch (v[len - 1]) {
  case 'H':
    *ms = n * 3600000;
    break;
  case 'M':
    *ms = n * 60000;
    break;
  case 'S':
    *ms = n * 1000;
    break;
  case 'm':
    *ms = n;
    break;
  case 'u':
    *ms = (n + 999) / 1000;
    break;
  case 'n':
    *ms = (n + 999999) / 1000000;
    break;
  default:
    return SM_EPARSE;
  }
  return 0;
}
