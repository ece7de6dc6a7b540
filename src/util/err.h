/* err.h - the project's one error currency.
 *
 * Every function that can fail returns 0 or a negative SM_E* code, in the manner of libuv:
 * callers write `if (err) return err;`. Codes from libraries (errno, libuv, nghttp2, OpenSSL,
 * hiredis, rabbitmq-c) are translated once, in the adapter module that calls the library.
 */
#ifndef SM_UTIL_ERR_H
#define SM_UTIL_ERR_H

/* X(name, value, message) */
#define SM_ERR_MAP(X)                                                                              \
  X(NOMEM, -1, "out of memory")                                                                    \
  X(INVAL, -2, "invalid argument")                                                                 \
  X(NOENT, -3, "not found")                                                                        \
  X(EXIST, -4, "already exists")                                                                   \
  X(AGAIN, -5, "resource temporarily unavailable")                                                 \
  X(LIMIT, -6, "limit reached")                                                                    \
  X(TOOBIG, -7, "message too large")                                                               \
  X(PROTO, -8, "protocol error")                                                                   \
  X(IO, -9, "input/output error")                                                                  \
  X(CLOSED, -10, "connection closed")                                                              \
  X(TIMEDOUT, -11, "timed out")                                                                    \
  X(CANCELED, -12, "operation canceled")                                                           \
  X(TLS, -13, "TLS error")                                                                         \
  X(AUTH, -14, "authentication failed")                                                            \
  X(PERM, -15, "permission denied")                                                                \
  X(STATE, -16, "operation not valid in this state")                                               \
  X(UNAVAIL, -17, "service unavailable")                                                           \
  X(PARSE, -18, "malformed input")                                                                 \
  X(UNSUPPORTED, -19, "not supported")                                                             \
  X(ADDR, -20, "bad address")                                                                      \
  X(INTERNAL, -21, "internal error")

/* On a function whose result must be looked at (an error code, an allocation): ignoring it is a
 * build error (-Werror=unused-result). */
#define SM_MUST_CHECK __attribute__((warn_unused_result))

enum sm_err {
  SM_OK = 0,
#define SM_ERR_ENUM_(name, val, msg) SM_E##name = (val),
  SM_ERR_MAP(SM_ERR_ENUM_)
#undef SM_ERR_ENUM_
};

/* Short symbolic name of an error code, e.g. "SM_ENOENT"; "SM_OK" for 0; never NULL. */
const char *sm_err_name(int err);

/* Human readable message of an error code; never NULL. */
const char *sm_strerror(int err);

/* Translates a negative libuv error code (UV_E*) into an SM_E* code. */
int sm_err_from_uv(int uverr);

/* Translates a positive errno value into an SM_E* code. */
int sm_err_from_errno(int errnum);

#endif
