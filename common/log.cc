#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "common/coarse_clock.h"

namespace xenpath {

void log_init(const std::string& level) noexcept {
  try {
    auto logger = spdlog::stderr_color_mt("xenpath");
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [%t] %v");
    spdlog::set_default_logger(logger);
  } catch (...) {
    // Already initialised: keep the existing logger.
  }
  spdlog::set_level(spdlog::level::from_str(level));
}

bool DeviceLog::admit() noexcept {
  // Guest-triggered lines come in floods: a clock read each must not be a
  // system call (common/coarse_clock.h); a window of seconds needs no more.
  const auto now = CoarseClock::now();
  if (now - window_start_ >= kGuestWindow) {
    if (suppressed_in_window_ > 0) {
      emit(spdlog::level::warn, "{} guest-triggered messages suppressed", suppressed_in_window_);
    }
    window_start_ = now;
    in_window_ = 0;
    suppressed_in_window_ = 0;
  }
  if (in_window_ < kGuestBurst) {
    ++in_window_;
    return true;
  }
  ++suppressed_in_window_;
  ++suppressed_total_;
  return false;
}

}  // namespace xenpath
