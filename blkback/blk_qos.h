// Per-VBD QoS: IOPS and bandwidth limits, read and write apart, as token
// buckets with a burst (issue 15; what tapdisk users ask for in
// xapi-project/blktap#241 and kernel blkback lacks).
//
// The model, and why:
// - Four buckets per queue: read IOPS, write IOPS, read bytes/s, write
//   bytes/s; a rate of 0 is unlimited. A READ draws on the read buckets;
//   WRITE, FLUSH_DISKCACHE, WRITE_BARRIER and DISCARD on the write buckets.
// - Every request costs one IOPS token. Bytes are what moves between guest
//   pages and the image: a read's or write's segments, a flush's or
//   barrier's data if it carries any. A dataless flush or barrier costs IOPS
//   only (its cost is the data written before it, already charged), and so
//   does a discard: it moves no data through the backend, and charging its
//   range would stall a guest for minutes after a whole-disk discard
//   (mkfs, fstrim) at a few MB/s.
// - A request may start while its buckets hold any positive credit, and
//   then takes its whole cost, going into debt if it must: a request larger
//   than the burst still passes (after the bucket refilled to positive) and
//   its debt delays what follows by cost / rate. Long-run throughput is the
//   rate exactly, whatever the request sizes; nothing starves.
// - Burst: `burst_ms` worth of the rate (default kQosDefaultBurstMs, at
//   least kQosMinBurstMs), never less than one request (IOPS) or one
//   largest request (bytes).
// - Refill uses the reactor's cached now() (no clock read per request); the
//   coarse clock's tick only moves when credit arrives, not how much.
//
// Threads: pure values; a VbdQueue's VbdQos belongs to the queue's reactor.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "blkback/blk_abi.h"
#include "common/result.h"

namespace xenpath {

inline constexpr uint64_t kQosDefaultBurstMs = 100;
// The smallest burst, in time at the rate: credit arrives in steps of the
// coarse clock's tick (4 ms at HZ=250, 10 ms at HZ=100) and a throttled
// queue resumes every kQosWakeQuantum; a burst smaller than a step would cap
// away credit and hold the queue below its rate.
inline constexpr uint64_t kQosMinBurstMs = 20;
// A throttled queue is resumed once this much credit (in time at the rate)
// has accrued, not at the first positive fraction: one wake-up per quantum
// (a timerfd_settime and an epoll wake-up, ~100 us on a PV dom0) instead of
// one per request at a low limit. The rate is unaffected; a throttled
// request waits at most this much longer.
inline constexpr std::chrono::milliseconds kQosWakeQuantum{5};

// What the backend keys say (per VBD). 0: unlimited / default burst.
struct QosLimits {
  uint64_t read_iops = 0;   // qos-read-iops
  uint64_t write_iops = 0;  // qos-write-iops
  uint64_t read_bps = 0;    // qos-read-bps (bytes per second)
  uint64_t write_bps = 0;   // qos-write-bps
  uint64_t burst_ms = 0;    // qos-burst-ms (0: kQosDefaultBurstMs)

  [[nodiscard]] bool limited() const noexcept { return read_iops || write_iops || read_bps || write_bps; }
  bool operator==(const QosLimits&) const = default;
};

// The backend keys, in the order above.
inline constexpr std::string_view kQosKeys[] = {"qos-read-iops", "qos-write-iops", "qos-read-bps", "qos-write-bps",
                                                "qos-burst-ms"};
// The field of `l` a key names; nullptr for another key.
uint64_t* qos_field(QosLimits& l, std::string_view key) noexcept;
// A key's value: decimal digits (at most 10^15), or "0"/"unlimited"/"off"
// for 0. EINVAL otherwise.
Result<uint64_t> parse_qos_value(std::string_view value) noexcept;
// "read 2000 IOPS, write 10 MB/s, burst 100 ms" or "unlimited".
std::string qos_describe(const QosLimits& l);

// One token bucket. Rates in units per second (fractional: a VBD's limit is
// split over its queues). Pure: time is passed in.
class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;

  // Sets rate and burst (rate 0: unlimited). A bucket going from unlimited
  // to limited starts full; a limited one keeps its credit or debt (capped
  // at the new burst), refilled at the old rate up to `now` first.
  void configure(double rate, double burst, Clock::time_point now) noexcept;
  // Credit accrued since the last refill, capped at the burst.
  void refill(Clock::time_point now) noexcept;
  // A request may start: unlimited, or any positive credit.
  [[nodiscard]] bool ready() const noexcept { return rate_ == 0 || tokens_ > 0; }
  // Takes `cost` (may go into debt); a negative cost gives credit back.
  void charge(double cost) noexcept;
  // When the credit reaches min(want, burst) at this rate (the last refill's
  // time if it is already there). Only for a limited bucket.
  [[nodiscard]] Clock::time_point ready_at(double want) const noexcept;

  [[nodiscard]] bool unlimited() const noexcept { return rate_ == 0; }
  [[nodiscard]] double rate() const noexcept { return rate_; }
  [[nodiscard]] double burst() const noexcept { return burst_; }
  [[nodiscard]] double tokens() const noexcept { return tokens_; }

 private:
  double rate_ = 0;
  double burst_ = 0;
  double tokens_ = 0;
  Clock::time_point last_{};
};

enum class QosDir : uint8_t { kRead, kWrite };

// What one request costs: its direction and the bytes it moves, from the
// private copy off the ring before admission. An indirect request's
// segments are in its descriptor pages, not read yet: it is estimated at
// whole pages (min(nr_segments, max_segments) x 4 KiB) and corrected to the
// admitted transfer when it starts (VbdQos::adjust).
struct QosCost {
  QosDir dir = QosDir::kRead;
  uint64_t bytes = 0;
};
QosCost qos_cost(const BlkRequest& req, uint32_t sector_size, uint32_t max_indirect_segments) noexcept;

// The four buckets of one queue.
class VbdQos {
 public:
  using Clock = TokenBucket::Clock;

  // This queue's share of the VBD's limits: 1/`queues` of each rate and
  // burst (no bucket shared between reactors), the burst floored at
  // kQosMinBurstMs, one request and `max_request_bytes`.
  void configure(const QosLimits& l, unsigned queues, uint64_t max_request_bytes, Clock::time_point now) noexcept;
  [[nodiscard]] bool limited() const noexcept { return limited_; }
  void refill(Clock::time_point now) noexcept;
  // May a request going `dir` start now?
  [[nodiscard]] bool ready(QosDir dir) const noexcept;
  // Takes one request of `bytes` from dir's buckets.
  void charge(QosDir dir, uint64_t bytes) noexcept;
  // A started request moved `actual` bytes where `charged` were taken (or a
  // refused one moved none): the difference goes back or is taken.
  void adjust(QosDir dir, uint64_t charged, uint64_t actual) noexcept;
  // When a request going `dir` may start, with kQosWakeQuantum's worth of
  // credit accrued.
  [[nodiscard]] Clock::time_point ready_at(QosDir dir) const noexcept;
  // How many requests the IOPS credit lets start now (at least 1, at most
  // `cap`; `cap` when IOPS are unlimited in a ready direction).
  [[nodiscard]] unsigned affordable(unsigned cap) const noexcept;

  [[nodiscard]] const TokenBucket& iops(QosDir d) const noexcept { return iops_[static_cast<unsigned>(d)]; }
  [[nodiscard]] const TokenBucket& bytes(QosDir d) const noexcept { return bytes_[static_cast<unsigned>(d)]; }

 private:
  TokenBucket iops_[2];
  TokenBucket bytes_[2];
  bool limited_ = false;
};

}  // namespace xenpath
