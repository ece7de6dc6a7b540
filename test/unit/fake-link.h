/* fake-link.h - a transport link that accepts every command and does nothing, for tests that
 * attach agents to a registry without a real stream. The peer name is "127.0.0.1:1". */
#ifndef SM_TEST_FAKE_LINK_H
#define SM_TEST_FAKE_LINK_H

#include "model/agent-t.h"

static int fake_send(void *link, const agent_command *cmd) {
  (void)link, (void)cmd;
  return 0;
}

static void fake_end(void *link, int reason, const char *message) {
  (void)link, (void)reason, (void)message;
}

static const char *fake_peer(void *link) {
  (void)link;
  return "127.0.0.1:1";
}

static const agent_link_ops fake_ops = {"fake", fake_send, fake_end, fake_peer};

#endif
