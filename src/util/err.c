/* err.c - names and messages of the project's error codes, and translations into them. */
#include "util/err.h"

#include <errno.h>
#include <uv.h>

const char *sm_err_name(int err) {
  switch (err) {
  case SM_OK:
    return "SM_OK";
#define SM_ERR_NAME_(name, val, msg)                                                               \
  case SM_E##name:                                                                                 \
    return "SM_E" #name;
    SM_ERR_MAP(SM_ERR_NAME_)
#undef SM_ERR_NAME_
  default:
    return "SM_E?";
  }
}

const char *sm_strerror(int err) {
  switch (err) {
  case SM_OK:
    return "success";
#define SM_ERR_MSG_(name, val, msg)                                                                \
  case SM_E##name:                                                                                 \
    return msg;
    SM_ERR_MAP(SM_ERR_MSG_)
#undef SM_ERR_MSG_
  default:
    return "unknown error";
  }
}

int sm_err_from_errno(int errnum) {
  switch (errnum) {
  case 0:
    return SM_OK;
  case ENOMEM:
    return SM_ENOMEM;
  case EINVAL:
  case ERANGE:
    return SM_EINVAL;
  case ENOENT:
    return SM_ENOENT;
  case EEXIST:
  case EADDRINUSE:
    return SM_EEXIST;
  case EAGAIN:
    return SM_EAGAIN;
  case EMFILE:
  case ENFILE:
  case ENOBUFS:
    return SM_ELIMIT;
  case EMSGSIZE:
  case E2BIG:
    return SM_ETOOBIG;
  case ECONNRESET:
  case EPIPE:
  case ECONNREFUSED:
  case ENOTCONN:
    return SM_ECLOSED;
  case ETIMEDOUT:
    return SM_ETIMEDOUT;
  case ECANCELED:
    return SM_ECANCELED;
  case EACCES:
  case EPERM:
    return SM_EPERM;
  case EADDRNOTAVAIL:
  case EAFNOSUPPORT:
    return SM_EADDR;
  case ENOTSUP:
    return SM_EUNSUPPORTED;
  default:
    return SM_EIO;
  }
}

int sm_err_from_uv(int uverr) {
  if (uverr >= 0)
    return SM_OK;
  switch (uverr) {
  case UV_EOF:
    return SM_ECLOSED;
  case UV_ECANCELED:
    return SM_ECANCELED;
  case UV_EAI_NONAME:
  case UV_EAI_AGAIN:
  case UV_EAI_FAIL:
    return SM_EADDR;
  default:
    /* libuv's codes are negated errno values on Unix. */
    return sm_err_from_errno(-uverr);
  }
}
