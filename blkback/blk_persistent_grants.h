// PersistentGrants: the bounded table of grants a queue keeps mapped when the
// frontend negotiated feature-persistent (it then reuses a fixed pool of
// grants, granted read-write, so mapping each once saves a map and an unmap
// -- and a TLB shootdown -- per I/O).
//
// - Map once: the grants a burst needs and the table lacks are mapped in ONE
//   writable GrantTable::map call (a "block"); each becomes an entry.
// - Bounded: at most max_pages grant pages mapped. When a burst's new grants
//   do not fit, idle entries are evicted least recently used first (as Linux
//   blkback's LRU); if they still do not fit, that burst's new grants are
//   mapped transiently (the caller owns and unmaps that mapping) and counted
//   as overflow, as Linux falls back to non-persistent mapping.
// - Idle entries older than idle_timeout go at purge() (a one-shot timer of
//   the owning queue, armed for next_purge() when it goes to sleep), so a
//   guest that stopped using grants gets them back.
// - Never leaks: a block is unmapped when its last entry goes; the
//   destructor unmaps everything left.
//
// Entries are refcounted: one grant may back several in-flight segments (a
// guest reading the same page twice); an entry in use is never evicted.
//
// Thread: owned by one queue's reactor thread, like the GrantTable handle it
// maps through. Guest-shared memory: the entries' pages are guest memory;
// this class hands out their addresses and never reads them. Allocation
// after construction: the ref scratch arrays grow to a call's new grants,
// and the table starts with a few entries and doubles when new grants need
// room, up to max_pages (so an idle device holds little); a failed growth
// makes the new grants transient, as a full table does.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/result.h"
#include "common/stats.h"
#include "common/xen/grant_table.h"
#include "common/xen/types.h"

namespace xenpath {

struct PersistentGrantStats {
  Counter hits;          // segments served by an entry already mapped
  Counter misses;        // grants mapped into the table
  Counter map_calls;     // GrantTable::map calls (one per burst with misses)
  Counter evictions;     // entries dropped (LRU for room, or idle purge)
  Counter overflows;     // grants mapped transiently for lack of room
  Counter live_entries;  // gauge
  Counter live_pages;    // gauge: mapped pages held (entries + their blocks)
};

class PersistentGrants {
 public:
  using Clock = std::chrono::steady_clock;
  using Handle = uint32_t;
  static constexpr Handle kTransient = UINT32_MAX;

  struct Options {
    // Linux blkback's max_persistent_grants default is 1056; the protocol
    // suggests RING_SIZE * BLKIF_MAX_SEGMENTS_PER_REQUEST per ring.
    uint32_t max_pages = 32 * 11;
    std::chrono::milliseconds idle_timeout{60'000};
  };

  PersistentGrants(GrantTable& gt, DomId dom, const Options& opts) noexcept;
  ~PersistentGrants();
  PersistentGrants(const PersistentGrants&) = delete;
  PersistentGrants& operator=(const PersistentGrants&) = delete;

  // Resolves every ref to a mapped, writable page: pages[i] and handles[i]
  // for refs[i] (duplicates allowed). Grants the table lacks are mapped in
  // one call; if they cannot all be kept, they go in one transient mapping
  // moved into *transient (handles kTransient). On error (the map failed:
  // a bad ref, ENOSPC) nothing is acquired and nothing new stays mapped.
  Status acquire(std::span<const GrantRef> refs, std::span<std::byte*> pages, std::span<Handle> handles,
                 GrantMapping* transient) noexcept;
  // Ends a use of each handle (kTransient ignored); unused entries become
  // idle, most recently used last.
  void release(std::span<const Handle> handles, Clock::time_point now = Clock::now()) noexcept;
  // Evicts idle entries unused for idle_timeout; returns how many.
  unsigned purge(Clock::time_point now = Clock::now()) noexcept;
  // Evicts every idle entry (disconnect); returns the entries still in use.
  unsigned clear() noexcept;
  // When purge() would next evict something (the least recently used idle
  // entry's timeout); nullopt with no idle entry.
  [[nodiscard]] std::optional<Clock::time_point> next_purge() const noexcept;

  [[nodiscard]] uint32_t live_entries() const noexcept { return live_entries_; }
  [[nodiscard]] uint32_t live_pages() const noexcept { return live_pages_; }
  [[nodiscard]] uint32_t max_pages() const noexcept { return max_pages_; }
  [[nodiscard]] bool contains(GrantRef ref) const noexcept { return find(ref) != kNone; }
  [[nodiscard]] const PersistentGrantStats& stats() const noexcept { return stats_; }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;

  struct Entry {
    GrantRef gref = 0;
    uint32_t block = kNone;
    uint32_t page = 0;
    uint32_t users = 0;
    uint32_t prev = kNone;  // idle LRU links (only while users == 0)
    uint32_t next = kNone;
    Clock::time_point last_used{};
    bool live = false;
  };
  struct Block {
    GrantMapping mapping;
    uint32_t entries = 0;  // live entries whose page is in this block
  };

  [[nodiscard]] uint32_t find(GrantRef ref) const noexcept;
  void hash_insert(GrantRef ref, uint32_t entry) noexcept;
  void hash_erase(GrantRef ref) noexcept;
  void lru_unlink(uint32_t e) noexcept;
  void lru_push_back(uint32_t e) noexcept;
  void evict(uint32_t e) noexcept;
  bool make_room(uint32_t pages) noexcept;
  void update_gauges() noexcept;

  GrantTable& gt_;
  DomId dom_;
  uint32_t max_pages_;
  std::chrono::milliseconds idle_timeout_;

  std::vector<Entry> entries_;
  std::vector<uint32_t> free_entries_;
  std::vector<Block> blocks_;
  std::vector<uint32_t> free_blocks_;
  // Open addressing, linear probing, backward-shift deletion: slot holds an
  // entry index or kNone. Capacity is a power of two >= 2 * max_pages.
  std::vector<uint32_t> slots_;
  uint32_t mask_ = 0;
  uint32_t lru_head_ = kNone;  // least recently used idle entry
  uint32_t lru_tail_ = kNone;
  uint32_t live_entries_ = 0;
  uint32_t live_pages_ = 0;
  std::vector<GrantRef> scratch_;      // refs of the current map call
  std::vector<uint32_t> scratch_idx_;  // entries created by the current acquire
  PersistentGrantStats stats_;
};

}  // namespace xenpath
