#include "blkback/blk_qos.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "common/xenbus/keys.h"

namespace xenpath {

namespace {
// Beyond any disk's rate; keeps rate x time far inside a double's exact range.
constexpr uint64_t kQosMaxValue = 1'000'000'000'000'000ULL;
// A wait longer than this is armed as this (the timer fires, the queue
// re-checks and re-arms): no time_point overflow for absurd debts.
constexpr double kMaxWaitNs = 3600e9;
}  // namespace

uint64_t* qos_field(QosLimits& l, std::string_view key) noexcept {
  if (key == kQosKeys[0]) return &l.read_iops;
  if (key == kQosKeys[1]) return &l.write_iops;
  if (key == kQosKeys[2]) return &l.read_bps;
  if (key == kQosKeys[3]) return &l.write_bps;
  if (key == kQosKeys[4]) return &l.burst_ms;
  return nullptr;
}

Result<uint64_t> parse_qos_value(std::string_view value) noexcept {
  if (value == "unlimited" || value == "off") return uint64_t{0};
  auto v = parse_decimal<uint64_t>(value);
  if (!v || *v > kQosMaxValue) return unexpected(EINVAL);
  return *v;
}

std::string qos_describe(const QosLimits& l) {
  if (!l.limited()) return "unlimited";
  std::string out;
  auto add = [&](std::string_view what, uint64_t iops, uint64_t bps) {
    if (iops == 0 && bps == 0) return;
    if (!out.empty()) out += ", ";
    out += what;
    if (iops != 0) out += fmt::format(" {} IOPS", iops);
    if (bps != 0) out += fmt::format("{} {:.3g} MB/s", iops != 0 ? "," : "", static_cast<double>(bps) / 1e6);
  };
  add("read", l.read_iops, l.read_bps);
  add("write", l.write_iops, l.write_bps);
  out += fmt::format(", burst {} ms", l.burst_ms != 0 ? l.burst_ms : kQosDefaultBurstMs);
  return out;
}

// ---------------------------------------------------------------------------

void TokenBucket::configure(double rate, double burst, Clock::time_point now) noexcept {
  if (rate_ != 0) refill(now);
  const bool was_unlimited = rate_ == 0;
  rate_ = rate > 0 ? rate : 0;
  burst_ = rate_ != 0 ? std::max(burst, 0.0) : 0;
  last_ = now;
  if (rate_ == 0) {
    tokens_ = 0;
  } else if (was_unlimited) {
    tokens_ = burst_;
  } else {
    tokens_ = std::min(tokens_, burst_);
  }
}

void TokenBucket::refill(Clock::time_point now) noexcept {
  if (rate_ == 0 || now <= last_) return;
  const double dt = std::chrono::duration<double>(now - last_).count();
  tokens_ = std::min(burst_, tokens_ + rate_ * dt);
  last_ = now;
}

void TokenBucket::charge(double cost) noexcept {
  if (rate_ == 0) return;
  tokens_ = std::min(burst_, tokens_ - cost);
}

TokenBucket::Clock::time_point TokenBucket::ready_at(double want) const noexcept {
  const double target = std::min(want, burst_);
  if (rate_ == 0 || tokens_ >= target) return last_;
  const double ns = std::min(std::ceil((target - tokens_) / rate_ * 1e9), kMaxWaitNs);
  return last_ + std::chrono::nanoseconds(static_cast<int64_t>(ns));
}

// ---------------------------------------------------------------------------

QosCost qos_cost(const BlkRequest& req, uint32_t sector_size, uint32_t max_indirect_segments) noexcept {
  QosCost c;
  c.dir = req.op == BLKIF_OP_READ ? QosDir::kRead : QosDir::kWrite;
  switch (req.op) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_FLUSH_DISKCACHE:
    case BLKIF_OP_WRITE_BARRIER:
      break;
    default:
      return c;  // discard: IOPS only (blk_qos.h); unknown: refused, IOPS only
  }
  if (req.indirect) {
    c.bytes = uint64_t{std::min(req.nr_segments, max_indirect_segments)} * kPageSize;
    return c;
  }
  // As admission will count them if they are valid; invalid ones are
  // refused (and refunded) anyway.
  const uint32_t per_page = static_cast<uint32_t>(kPageSize / sector_size);
  for (const BlkSegment& s : req.direct_segments()) {
    if (s.first_sect <= s.last_sect && s.last_sect < per_page) {
      c.bytes += uint64_t{static_cast<uint32_t>(s.last_sect - s.first_sect) + 1u} * sector_size;
    }
  }
  return c;
}

void VbdQos::configure(const QosLimits& l, unsigned queues, uint64_t max_request_bytes,
                       Clock::time_point now) noexcept {
  const double n = std::max(queues, 1u);
  const double burst_s =
      static_cast<double>(std::max(l.burst_ms != 0 ? l.burst_ms : kQosDefaultBurstMs, kQosMinBurstMs)) / 1000.0;
  auto set = [&](TokenBucket& b, uint64_t rate, double min_burst) {
    const double r = static_cast<double>(rate) / n;
    b.configure(r, std::max(r * burst_s, min_burst), now);
  };
  set(iops_[0], l.read_iops, 1);
  set(iops_[1], l.write_iops, 1);
  set(bytes_[0], l.read_bps, static_cast<double>(max_request_bytes));
  set(bytes_[1], l.write_bps, static_cast<double>(max_request_bytes));
  limited_ = l.limited();
}

void VbdQos::refill(Clock::time_point now) noexcept {
  for (auto& b : iops_) b.refill(now);
  for (auto& b : bytes_) b.refill(now);
}

bool VbdQos::ready(QosDir dir) const noexcept { return iops(dir).ready() && bytes(dir).ready(); }

void VbdQos::charge(QosDir dir, uint64_t bytes) noexcept {
  const auto d = static_cast<unsigned>(dir);
  iops_[d].charge(1);
  bytes_[d].charge(static_cast<double>(bytes));
}

void VbdQos::adjust(QosDir dir, uint64_t charged, uint64_t actual) noexcept {
  if (charged == actual) return;
  bytes_[static_cast<unsigned>(dir)].charge(static_cast<double>(actual) - static_cast<double>(charged));
}

VbdQos::Clock::time_point VbdQos::ready_at(QosDir dir) const noexcept {
  const double q = std::chrono::duration<double>(kQosWakeQuantum).count();
  const TokenBucket& i = iops(dir);
  const TokenBucket& b = bytes(dir);
  Clock::time_point at{};
  if (!i.unlimited()) at = std::max(at, i.ready_at(i.rate() * q));
  if (!b.unlimited()) at = std::max(at, b.ready_at(b.rate() * q));
  return at;
}

unsigned VbdQos::affordable(unsigned cap) const noexcept {
  unsigned best = 0;
  for (unsigned d = 0; d < 2; ++d) {
    if (!ready(static_cast<QosDir>(d))) continue;
    if (iops_[d].unlimited()) return cap;
    best = std::max(best, static_cast<unsigned>(std::min<double>(std::ceil(iops_[d].tokens()), cap)));
  }
  return std::max(best, 1u);
}

}  // namespace xenpath
