// BlkRingPort: the backend end of a blkif ring whatever ABI the frontend
// chose, handing out canonical requests. One virtual call per burst (and per
// response) hides which of the three BackRing<> instantiations is underneath.
//
// Owned by one queue's reactor thread. Touches the guest-shared ring pages
// through BackRing (which copies every request before it is looked at).
#pragma once

#include <array>
#include <memory>
#include <span>

#include "blkback/blk_abi.h"
#include "common/result.h"
#include "common/ring.h"
#include "common/stats.h"

namespace xenpath {

class BlkRingPort {
 public:
  static constexpr unsigned kMaxBurst = 64;

  virtual ~BlkRingPort() = default;
  virtual Status attach(void* shared, size_t bytes, RingQueueStats* stats) noexcept = 0;
  // Up to out.size() (<= kMaxBurst) requests, copied and decoded. EPROTO
  // once the frontend overflowed the ring (halted for good).
  virtual Result<unsigned> consume(std::span<BlkRequest> out) noexcept = 0;
  virtual bool push_response(uint64_t id, uint8_t op, int16_t status) noexcept = 0;
  // Publishes queued responses; true when the frontend must be notified.
  virtual bool flush() noexcept = 0;
  virtual bool final_check() noexcept = 0;
  [[nodiscard]] virtual unsigned size() const noexcept = 0;
  [[nodiscard]] virtual bool halted() const noexcept = 0;

  static std::unique_ptr<BlkRingPort> make(BlkProtocol protocol) noexcept;
};

template <typename Types>
class BlkRingPortOf final : public BlkRingPort {
 public:
  Status attach(void* shared, size_t bytes, RingQueueStats* stats) noexcept override {
    return ring_.attach(shared, bytes, stats);
  }
  Result<unsigned> consume(std::span<BlkRequest> out) noexcept override {
    const size_t n = out.size() < kMaxBurst ? out.size() : kMaxBurst;
    XP_ASSIGN_OR_RETURN(const unsigned got, ring_.consume(std::span<typename Types::Request>(slots_.data(), n)));
    for (unsigned i = 0; i < got; ++i) out[i] = blk_decode(slots_[i]);
    return got;
  }
  bool push_response(uint64_t id, uint8_t op, int16_t status) noexcept override {
    return ring_.emplace_response([&](auto& r) { blk_set_response(r, id, op, status); });
  }
  bool flush() noexcept override { return ring_.flush(); }
  bool final_check() noexcept override { return ring_.final_check(); }
  [[nodiscard]] unsigned size() const noexcept override { return ring_.size(); }
  [[nodiscard]] bool halted() const noexcept override { return ring_.halted(); }

 private:
  BackRing<Types> ring_;
  std::array<typename Types::Request, kMaxBurst> slots_{};
};

inline std::unique_ptr<BlkRingPort> BlkRingPort::make(BlkProtocol protocol) noexcept {
  switch (protocol) {
    case BlkProtocol::kX86_32:
      return std::unique_ptr<BlkRingPort>(new (std::nothrow) BlkRingPortOf<BlkifX86_32Ring>());
    case BlkProtocol::kX86_64:
      return std::unique_ptr<BlkRingPort>(new (std::nothrow) BlkRingPortOf<BlkifX86_64Ring>());
    case BlkProtocol::kNative:
      break;
  }
  return std::unique_ptr<BlkRingPort>(new (std::nothrow) BlkRingPortOf<BlkifNativeRing>());
}

}  // namespace xenpath
