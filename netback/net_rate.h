// Guest TX rate limiting with kernel netback's credit semantics (the
// backend's xenstore "rate" key, "<bytes>,<usec>": `bytes` of credit every
// `usec` microseconds, per queue).
//
// As Linux's tx_credit_exceeded()/tx_add_credit():
// - a packet passes while it fits in the remaining credit, which it debits;
// - one that does not fit waits: if the current window is over, credit is
//   added and the window restarts now; if it still does not fit, a
//   replenish "timer" is armed for the window's end and the window moves
//   there — nothing passes until it fires;
// - adding credit never wraps: remaining + bytes saturates, and the result
//   is capped at max(bytes, 128 KiB) so a slow rate can still pass a
//   maximal (64 KiB GSO) packet after a quiet spell;
// - an absent or unparsable "rate" means unlimited.
// Linux measures the window in jiffies (usec / 1000 milliseconds, rounded
// down); we keep microseconds, so a window below 1 ms is honoured instead of
// becoming "replenish on every packet".
//
// Owned by the queue's thread; no guest memory. Time is passed in, so the
// owner uses its reactor's clock and tests are deterministic.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

namespace xenpath {

struct RateSpec {
  uint64_t bytes = ~uint64_t{0};  // credit per interval; all ones: unlimited
  uint64_t usec = 0;
  [[nodiscard]] bool unlimited() const noexcept { return bytes == ~uint64_t{0}; }
  friend bool operator==(const RateSpec&, const RateSpec&) = default;
};

// "<bytes>,<usec>", decimal digits only, as xen_net_read_rate() accepts
// them; nullopt when malformed (the caller then runs unlimited and says so).
std::optional<RateSpec> parse_rate(std::string_view s) noexcept;

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr uint64_t kMinBurst = 131072;  // Linux: a 128 KiB jumbo/GSO frame

  RateLimiter() noexcept = default;

  // Connect time: full credit, the window starts `now`.
  void start(const RateSpec& spec, Clock::time_point now) noexcept;
  // The "rate" key changed while connected (xen_net_rate_changed): a pending
  // replenish fires at once; otherwise the credit is clamped to the new size.
  void update(const RateSpec& spec, Clock::time_point now) noexcept;

  // True: `size` bytes may be sent now (debited). False: wait for
  // replenish_at().
  bool admit(uint32_t size, Clock::time_point now) noexcept;

  // When a refused packet may be retried (the armed replenish).
  [[nodiscard]] std::optional<Clock::time_point> replenish_at() const noexcept;
  [[nodiscard]] bool limited() const noexcept { return timer_armed_; }
  [[nodiscard]] uint64_t remaining() const noexcept { return remaining_; }
  [[nodiscard]] const RateSpec& spec() const noexcept { return spec_; }

 private:
  void add_credit() noexcept;
  bool exceeded(uint32_t size, Clock::time_point now) noexcept;

  RateSpec spec_{};
  uint64_t remaining_ = ~uint64_t{0};
  Clock::time_point window_start_{};
  bool timer_armed_ = false;
  Clock::time_point timer_at_{};
};

}  // namespace xenpath
