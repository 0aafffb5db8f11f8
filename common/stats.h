// Statistics counters. Each counter has exactly one writer (the thread that
// owns the queue) and any number of readers (the stats reporter), so a
// relaxed load+store is enough: no locked read-modify-write on the datapath.
#pragma once

#include <atomic>
#include <cstdint>

namespace xenpath {

class Counter {
 public:
  void add(uint64_t n = 1) noexcept { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void set(uint64_t n) noexcept { v_.store(n, std::memory_order_relaxed); }
  [[nodiscard]] uint64_t get() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

// What every shared-ring queue counts, whatever the protocol.
struct RingQueueStats {
  Counter requests;                  // requests consumed from the ring
  Counter responses;                 // responses pushed
  Counter error_responses;           // requests answered with an error (bad input)
  Counter batches;                   // non-empty consume bursts
  Counter notifications_sent;        // event channel notifies to the frontend
  Counter notifications_suppressed;  // pushes where the ring macros said "no need"
  Counter events_received;           // event channel wake-ups
  Counter halted;                    // 1 once the queue was halted for a misbehaving frontend
};

}  // namespace xenpath
