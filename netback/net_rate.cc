#include "netback/net_rate.h"

#include <algorithm>
#include <limits>

namespace xenpath {

namespace {

// Digits only; nullopt on anything else or on overflow (Linux's
// simple_strtoul wraps silently; a wrapped rate is not what the operator
// wrote, so we refuse it).
std::optional<uint64_t> parse_u64(std::string_view s) noexcept {
  if (s.empty()) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

}  // namespace

std::optional<RateSpec> parse_rate(std::string_view s) noexcept {
  const size_t comma = s.find(',');
  if (comma == std::string_view::npos) return std::nullopt;
  auto b = parse_u64(s.substr(0, comma));
  auto u = parse_u64(s.substr(comma + 1));
  if (!b || !u) return std::nullopt;
  return RateSpec{*b, *u};
}

void RateLimiter::start(const RateSpec& spec, Clock::time_point now) noexcept {
  spec_ = spec;
  remaining_ = spec.bytes;
  window_start_ = now;
  timer_armed_ = false;
}

void RateLimiter::update(const RateSpec& spec, Clock::time_point now) noexcept {
  spec_ = spec;
  if (timer_armed_) {
    // mod_timer_pending(now): the pending replenish runs immediately.
    timer_armed_ = false;
    (void)now;
    add_credit();
  } else if (remaining_ > spec.bytes) {
    remaining_ = spec.bytes;
  }
}

void RateLimiter::add_credit() noexcept {
  const uint64_t max_burst = std::max<uint64_t>(kMinBurst, spec_.bytes);
  uint64_t max_credit = remaining_ + spec_.bytes;
  if (max_credit < remaining_) max_credit = std::numeric_limits<uint64_t>::max();  // wrapped: saturate
  remaining_ = std::min(max_credit, max_burst);
}

bool RateLimiter::exceeded(uint32_t size, Clock::time_point now) noexcept {
  if (timer_armed_) {
    if (now < timer_at_) return true;  // replenish still pending
    timer_armed_ = false;              // it fired: what its callback does
    add_credit();
  }
  const Clock::time_point next = window_start_ + std::chrono::microseconds(spec_.usec);
  if (now >= next) {
    window_start_ = now;
    add_credit();
  }
  if (size > remaining_) {
    timer_armed_ = true;
    timer_at_ = next;
    window_start_ = next;
    return true;
  }
  return false;
}

bool RateLimiter::admit(uint32_t size, Clock::time_point now) noexcept {
  if (spec_.unlimited()) return true;
  if (size > remaining_ && exceeded(size, now)) return false;
  remaining_ -= size;
  return true;
}

std::optional<RateLimiter::Clock::time_point> RateLimiter::replenish_at() const noexcept {
  if (!timer_armed_) return std::nullopt;
  return timer_at_;
}

}  // namespace xenpath
