// BackendDaemon's service-manager side (common/systemd_notify.h): when a
// Type=notify unit may call the daemon started, and the keep-alive a
// WatchdogSec= unit expects. BackendDaemon::start() makes one; the driver's
// first-scan callback and a control-reactor timer hold it.
//
// Threads: everything but make() runs on the control reactor, so a control
// plane that stops turning stops the WATCHDOG=1 datagrams and systemd
// restarts the daemon. Reads the daemon's driver counters there.
#pragma once

#include <memory>
#include <string>

#include "common/result.h"

namespace xenpath {

class BackendDaemon;

class SystemdLink : public std::enable_shared_from_this<SystemdLink> {
 public:
  explicit SystemdLink(BackendDaemon& daemon) noexcept : daemon_(daemon) {}

  // The driver's first scan is done (its on_enumerated callback).
  void enumerated();
  // start() is done: the control socket and the metrics endpoint listen.
  // `status_tail` ("; control ...; metrics ...") ends every STATUS= line.
  // With NOTIFY_SOCKET set, starts the WATCHDOG=1/STATUS= timer. Any thread
  // but the control reactor's.
  Status started(std::string status_tail) noexcept;

 private:
  void maybe_ready();
  [[nodiscard]] std::string status() const;

  BackendDaemon& daemon_;
  bool enumerated_ = false;
  bool started_ = false;
  bool ready_ = false;
  std::string tail_;
  std::string last_status_;
};

}  // namespace xenpath
