/* sirius-manager - the SiriusScan agent manager. Settings in, one loop, exit 0 after a clean
 * shutdown. */
#include "app/manager.h"
#include "app/settings.h"
#include "util/err.h"
#include "util/log.h"

#include <stdlib.h>
#include <uv.h>

int main(int argc, char **argv) {
  sm_settings settings;
  int rc = sm_settings_load(&settings, argc, argv);
  if (rc == 1) {
    sm_settings_finish(&settings);
    return 0;
  }
  if (rc) {
    sm_settings_finish(&settings);
    return 2;
  }
  sm_log_configure(settings.log_level, settings.log_format);

  uv_loop_t *loop = uv_default_loop();
  sm_manager m;
  int err = sm_manager_start(&m, loop, &settings);
  /* Run even after a failed start: the close callbacks of what was opened must run. */
  uv_run(loop, UV_RUN_DEFAULT);
  int close_err = uv_loop_close(loop);
  if (close_err)
    sm_log_warn("manager", "loop closed with handles open", SM_LS("error", uv_err_name(close_err)));
  if (!err)
    sm_log_info("manager", "stopped");
  sm_settings_finish(&settings);
  return err ? 1 : 0;
}
