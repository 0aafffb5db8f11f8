#include "common/daemon_systemd.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/daemon.h"
#include "common/systemd_notify.h"

namespace xenpath {

namespace {
// STATUS= refresh without a watchdog: `systemctl status` shows the device
// counts at most this old.
constexpr std::chrono::seconds kStatusPeriod{10};
}  // namespace

std::string SystemdLink::status() const {
  const BackendDriverStats& s = daemon_.driver().stats();
  return fmt::format("{} device(s), {} connected{}", s.devices.get(), s.connected.get(), tail_);
}

void SystemdLink::enumerated() {
  enumerated_ = true;
  maybe_ready();
}

void SystemdLink::maybe_ready() {
  // Both the first scan (devices that existed are probed) and the end of
  // start() (socket and metrics endpoint listening): a unit ordered after
  // this one (xendomains) may then use either.
  if (ready_ || !enumerated_ || !started_) return;
  ready_ = true;
  try {
    last_status_ = status();
    systemd_notify_ready(last_status_);
    spdlog::info("{}: ready: {}", daemon_.options().name, last_status_);
  } catch (...) {
    systemd_notify_ready("");  // allocation failed: ready all the same
  }
}

Status SystemdLink::started(std::string status_tail) noexcept {
  const auto watchdog = systemd_watchdog_period();
  const bool enabled = systemd_notify_enabled();
  Reactor& control = daemon_.control();
  Status st = ok();
  control.call([&] {
    tail_ = std::move(status_tail);
    started_ = true;
    maybe_ready();
    if (!enabled) return;
    const bool dog = watchdog.count() > 0;
    const std::chrono::nanoseconds period = dog ? std::chrono::nanoseconds(watchdog) : kStatusPeriod;
    auto timer = control.add_timer(period, [self = shared_from_this(), dog] {
      try {
        std::string s = self->status();
        // The watchdog needs its datagram every period; the status only when it changed.
        if (s != self->last_status_ || dog) systemd_notify_status(s, dog);
        self->last_status_ = std::move(s);
      } catch (...) {
        if (dog) systemd_notify_status("", true);
      }
    });
    if (!timer) st = unexpected(timer.error());
  });
  return st;
}

}  // namespace xenpath
