// Logging: spdlog underneath, one process-wide logger, a per-device prefix
// ("vbd 5/51712: ") and rate limiting for messages a guest can trigger (a
// hostile guest must not be able to flood dom0's log).
//
// DeviceLog is owned by the thread that owns the device/queue; the rate
// limiter is not shared between threads.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

namespace xenpath {

// Level names as spdlog spells them: trace, debug, info, warn, error, off.
void log_init(const std::string& level = "info") noexcept;

class DeviceLog {
 public:
  // Guest-triggered messages: at most kGuestBurst per kGuestWindow, then one
  // line saying how many were suppressed when the window reopens.
  static constexpr uint32_t kGuestBurst = 10;
  static constexpr std::chrono::seconds kGuestWindow{5};

  explicit DeviceLog(std::string prefix) : prefix_(std::move(prefix)) {}

  [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }

  // One method per level, so a call site reads as its severity. Levels by
  // what they mean to an operator, not by who calls:
  template <typename... Args>
  void info(fmt::format_string<Args...> f, Args&&... args) const noexcept {  // a device or queue changed state
    emit(spdlog::level::info, f, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void warn(fmt::format_string<Args...> f, Args&&... args) const noexcept {  // refused, degraded or retried
    emit(spdlog::level::warn, f, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void error(fmt::format_string<Args...> f, Args&&... args) const noexcept {  // a device stopped working
    emit(spdlog::level::err, f, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void debug(fmt::format_string<Args...> f, Args&&... args) const noexcept {  // per-request detail, off by default
    emit(spdlog::level::debug, f, std::forward<Args>(args)...);
  }

  // A warning caused by guest input, rate limited. Returns whether it was logged.
  template <typename... Args>
  bool guest(fmt::format_string<Args...> f, Args&&... args) noexcept {
    if (!admit()) return false;
    emit(spdlog::level::warn, f, std::forward<Args>(args)...);
    return true;
  }

  [[nodiscard]] uint64_t suppressed_total() const noexcept { return suppressed_total_; }

 private:
  bool admit() noexcept;

  template <typename... Args>
  void emit(spdlog::level::level_enum lvl, fmt::format_string<Args...> f, Args&&... args) const noexcept {
    try {
      if (!spdlog::should_log(lvl)) return;
      spdlog::log(lvl, "{}{}", prefix_, fmt::format(f, std::forward<Args>(args)...));
    } catch (...) {
      // Logging must never take the datapath down.
    }
  }

  std::string prefix_;
  std::chrono::steady_clock::time_point window_start_{};
  uint32_t in_window_ = 0;
  uint64_t suppressed_in_window_ = 0;
  uint64_t suppressed_total_ = 0;
};

}  // namespace xenpath
