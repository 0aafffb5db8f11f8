#include "common/systemd_notify.h"

#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <string>

namespace xenpath {
namespace {

// STATUS= is one line: a newline would start another assignment. An empty
// status leaves the last one shown.
void notify(std::string_view head, std::string_view status) noexcept {
  try {
    std::string msg(head);
    if (!status.empty()) msg += "STATUS=";
    for (char c : status) msg += c == '\n' ? ' ' : c;
    if (msg.empty()) return;
    (void)sd_notify(0, msg.c_str());
  } catch (...) {
    // Out of memory: the service manager misses one line, the daemon goes on.
  }
}

}  // namespace

bool systemd_notify_enabled() noexcept {
  const char* s = std::getenv("NOTIFY_SOCKET");
  return s != nullptr && *s != '\0';
}

void systemd_notify_ready(std::string_view status) noexcept { notify("READY=1\n", status); }

void systemd_notify_status(std::string_view status, bool watchdog) noexcept {
  notify(watchdog ? "WATCHDOG=1\n" : "", status);
}

void systemd_notify_stopping(std::string_view status) noexcept { notify("STOPPING=1\n", status); }

std::chrono::microseconds systemd_watchdog_period() noexcept {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0) return std::chrono::microseconds(0);
  return std::chrono::microseconds(usec / 2);
}

}  // namespace xenpath
