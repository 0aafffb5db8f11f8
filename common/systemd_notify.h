// The daemons' side of systemd's service protocol (sd_notify(3)), the only
// code that includes libsystemd: READY=1 once the first xenbus scan is done
// (Type=notify units start their dependents then), WATCHDOG=1 from the
// control reactor (a stuck control plane gets the service restarted),
// STATUS= lines for `systemctl status`, STOPPING=1 on the way out. Started
// without NOTIFY_SOCKET (by hand, by a test, by the lab) every call does
// nothing.
//
// Threads: any. sd_notify() keeps no state: each call is one datagram to
// the socket named by the environment.
#pragma once

#include <chrono>
#include <string_view>

namespace xenpath {

// Whether systemd (or anything speaking its protocol) listens: NOTIFY_SOCKET is set.
[[nodiscard]] bool systemd_notify_enabled() noexcept;
// READY=1 with a STATUS= line.
void systemd_notify_ready(std::string_view status) noexcept;
// STATUS= alone, or with WATCHDOG=1 when `watchdog`.
void systemd_notify_status(std::string_view status, bool watchdog) noexcept;
// STOPPING=1 with a STATUS= line.
void systemd_notify_stopping(std::string_view status) noexcept;
// How often to send WATCHDOG=1: half of WATCHDOG_USEC when the service
// manager watches this process (WatchdogSec= and WATCHDOG_PID is ours),
// else zero (no watchdog).
[[nodiscard]] std::chrono::microseconds systemd_watchdog_period() noexcept;

}  // namespace xenpath
