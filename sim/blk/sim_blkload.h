// BlkLoad: the I/O generator of a simulated guest. It keeps a queue depth of
// requests outstanding on one SimBlkfront ring (random or sequential, a
// read/write mix, optional periodic flushes) and measures what comes back.
//
// Verify mode: every written block carries a pattern derived from (vbd id,
// LBA, generation); the engine remembers, per block, the generation of the
// last write the backend acknowledged, and checks every byte read back
// against it (a never-written block must read as zeros, so verify wants a
// zeroed region). Two requests never target the same block at once in
// verify mode (the result of racing a read with a write is undefined on a
// real disk too), so every check is exact. Mismatches are counted and the
// first few are logged with their disk offset and what the data turned out
// to be (the pattern's sector header names the vbd/LBA/generation it was
// written for, which tells a misplaced write from a stale or torn one).
//
// The engine is single-threaded and never blocks in poll(): one guest
// thread can drive several BlkLoads (several rings, several VBDs) and sleep
// on their shared event channel with wait_any() when none can progress.
//
// Threads: a BlkLoad and its SimBlkfront belong to the guest thread that
// polls it; its stats are single-writer counters readable from any thread.
// Guest memory: through its SimBlkfront only (granted data pages); its own
// buffers are private.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/result.h"
#include "common/stats.h"
#include "sim/blk/sim_blkfront.h"

namespace xenpath::sim {

// Latencies in nanoseconds: log2 octaves, each split into 8 linear
// sub-buckets (so a percentile is known to within 12.5%), single writer.
class LatencyHistogram {
 public:
  static constexpr unsigned kSubBits = 3;
  // Values below 8 ns are exact; then octaves 2^3 .. 2^63.
  static constexpr unsigned kBuckets = (64 - kSubBits + 1) << kSubBits;

  void record(uint64_t ns) noexcept;
  // Adds `other`'s samples (read from any thread) to this one (its writer).
  void add(const LatencyHistogram& other) noexcept;
  [[nodiscard]] uint64_t count() const noexcept;
  [[nodiscard]] uint64_t max_ns() const noexcept { return max_.get(); }
  // The q-quantile (0 < q <= 1), interpolated inside its bucket and capped
  // at the maximum seen; 0 when empty.
  [[nodiscard]] uint64_t percentile_ns(double q) const noexcept;

  static unsigned bucket_of(uint64_t ns) noexcept;
  static uint64_t bucket_low(unsigned b) noexcept;  // smallest value in bucket b

 private:
  Counter buckets_[kBuckets];
  Counter max_;
};

struct BlkLoadStats {
  Counter ops;  // requests answered (flushes included)
  Counter reads;
  Counter writes;
  Counter flushes;
  Counter read_bytes;
  Counter write_bytes;
  Counter errors;      // answers other than BLKIF_RSP_OKAY, or a bad answer (wrong op, grant kept mapped, stray id)
  Counter mismatches;  // verify: blocks read back different from what was last acknowledged
  Counter in_flight;   // gauge
  LatencyHistogram latency;  // submit to answer, every op
};

struct BlkLoadSpec {
  unsigned queue_depth = 32;
  uint32_t block_size = 4096;   // bytes, a multiple of 512; every I/O is one block, block aligned
  unsigned read_percent = 100;  // of data ops
  bool random = true;           // else sequential from offset_bytes, wrapping inside the span
  uint64_t span_bytes = 0;      // 0: from offset_bytes to the end of the disk
  uint64_t offset_bytes = 0;
  unsigned flush_every = 0;  // a FLUSH_DISKCACHE after every N writes; 0: never
  bool verify = false;
  uint64_t seed = 1;
  uint64_t max_ops = 0;  // data ops to submit; 0: unbounded
  // Verify: the region held data before the load started (an existing
  // image), so a block reads as anything until the load wrote it.
  bool unknown_start = false;
  // Verify: a file descriptor (a pipe, a file) that gets, after every
  // acknowledged flush, one line "W <block> <generation>" per write the
  // flush covers (acknowledged before the flush was sent), then "F". What
  // a journal lists up to its last "F" must survive a crash of the backend.
  int journal_fd = -1;
};

// The pattern of verify mode, exposed for tests and tools. Every 512-byte
// sector of a block written at byte `offset` starts with a header (magic
// and vbd id, LBA, generation) followed by words derived from all three.
// Generation 0 means never written: zeros.
void blk_pattern_fill(std::byte* p, size_t len, uint32_t vbd, uint64_t offset, uint32_t generation) noexcept;
// Offset in `p` of the first byte that differs from the pattern, or len.
size_t blk_pattern_check(const std::byte* p, size_t len, uint32_t vbd, uint64_t offset, uint32_t generation) noexcept;
// What one 512-byte sector at `lba` holds: 0 for zeros, the generation of a
// whole sector of the pattern written for (vbd, lba), or UINT32_MAX for
// anything else (torn, misplaced, foreign).
uint32_t blk_pattern_sector(const std::byte* p, uint32_t vbd, uint64_t lba) noexcept;

class BlkLoad {
 public:
  // `front` must outlive the load and not be used by anyone else meanwhile.
  // EINVAL for a spec the disk or the ring cannot take (a block size not a
  // multiple of 512, larger than the ring can express, a span outside the
  // disk or smaller than one block).
  static Result<std::unique_ptr<BlkLoad>> create(SimBlkfront& front, uint64_t disk_bytes, const BlkLoadSpec& spec,
                                                 uint32_t vbd_id) noexcept;
  ~BlkLoad();
  BlkLoad(const BlkLoad&) = delete;
  BlkLoad& operator=(const BlkLoad&) = delete;

  // Reaps what was answered, then tops the queue depth up and publishes.
  // Never blocks. Returns the number of completions handled.
  unsigned poll() noexcept;
  // Sleeps until the ring may have progressed or `limit` passed (returns at
  // once if answers arrived while re-arming).
  Status wait(std::chrono::milliseconds limit) noexcept;
  // For loads whose rings share one event channel (one guest thread driving
  // several): re-arms each and sleeps once on that channel if none has work.
  static Status wait_any(std::span<BlkLoad* const> loads, std::chrono::milliseconds limit) noexcept;
  // One pass of a guest thread over its loads: poll() on each. Returns the
  // completions reaped; `all_done` says whether every load is done().
  static unsigned poll_all(std::span<BlkLoad* const> loads, bool& all_done) noexcept;
  // Stops submitting and reaps until nothing is in flight; ETIMEDOUT if the
  // backend does not answer everything in time.
  Status drain(std::chrono::milliseconds timeout) noexcept;
  // A new phase after drain(): `spec` replaces the old one (max_ops counts
  // from now) while the verify state is kept, so a region written in one
  // phase can be checked by another. The block size, region and verify
  // flag must not change (EINVAL); EBUSY while I/O is in flight.
  Status next_phase(const BlkLoadSpec& spec) noexcept;

  // True once max_ops were submitted and answered (never when unbounded).
  [[nodiscard]] bool done() const noexcept;
  [[nodiscard]] const BlkLoadStats& stats() const noexcept { return stats_; }
  [[nodiscard]] const BlkLoadSpec& spec() const noexcept { return spec_; }
  [[nodiscard]] SimBlkfront& front() noexcept { return front_; }

 private:
  struct Slot {
    SimBlkfront::Io io;  // first: reap() hands back &io, which is the slot
    uint64_t block = 0;
    uint32_t generation = 0;  // a write's
    uint64_t covers = 0;      // a flush's: writes acknowledged before it (journal)
    std::chrono::steady_clock::time_point start;
    std::byte* buf = nullptr;
  };
  static constexpr uint32_t kUnknown = UINT32_MAX;  // a failed write: any content accepted
  static constexpr unsigned kMaxLogged = 8;

  BlkLoad(SimBlkfront& front, const BlkLoadSpec& spec, uint32_t vbd_id) noexcept;
  uint64_t next_random() noexcept;
  bool pick_block(uint64_t& block) noexcept;
  bool submit_one() noexcept;
  void complete(Slot& s) noexcept;
  void check_read(const Slot& s) noexcept;
  void journal_flushed(uint64_t upto) noexcept;

  SimBlkfront& front_;
  BlkLoadSpec spec_;
  uint32_t vbd_id_;
  uint64_t blocks_ = 0;       // in the span
  uint64_t first_block_ = 0;  // offset_bytes / block_size
  uint32_t sectors_ = 0;      // per block, in ring sectors
  std::vector<Slot> slots_;
  std::vector<Slot*> free_;
  std::byte* buffers_ = nullptr;  // verify: one block per slot
  uint64_t rng_ = 0;
  uint64_t cursor_ = 0;     // sequential position (block in span)
  uint64_t submitted_ = 0;  // data ops this phase
  uint64_t writes_since_flush_ = 0;
  bool flush_due_ = false;
  bool draining_ = false;
  unsigned in_flight_ = 0;
  uint64_t stray_seen_ = 0;
  // Verify state, per block of the span.
  std::vector<uint32_t> generation_;  // last acknowledged write (0: never)
  std::vector<uint8_t> block_busy_;   // a request on it is in flight
  uint32_t next_generation_ = 1;
  unsigned logged_ = 0;
  // Journal: writes acknowledged (block, generation), in order, from
  // journal_base_ on; a flush covers those acknowledged before it was sent.
  std::vector<std::pair<uint64_t, uint32_t>> acked_;
  uint64_t journal_base_ = 0;
  BlkLoadStats stats_;
};

}  // namespace xenpath::sim
