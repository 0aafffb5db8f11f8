// BlockCache: the daemon's one read cache over immutable base images,
// shared by every VBD queue on every worker (docs/cache.md).
//
// Memory: a byte budget carved into fixed-size blocks (64 KiB by default),
// mmap'ed once at create() (page aligned, so usable for O_DIRECT reads and as
// io_uring fixed buffers: fixed_buffers() gives the iovecs for
// io_uring_register_buffers). The budget is never exceeded: the cache never
// allocates block memory after create(); when every block is pinned or being
// filled a lookup says kBypass and the caller reads around the cache.
//
// Index and eviction: the blocks are split evenly over N shards (a power of
// two, at most 64, at least 128 blocks each); a key's hash picks its shard.
// Each shard has its own mutex, index (open addressing), and S3-FIFO queues
// (small FIFO ~10 % of the shard, main FIFO with a 2-bit access count, ghost
// FIFO of recently evicted keys). The datapath takes no global lock: a
// lookup holds one shard's mutex for a hash probe and a few field updates
// (tens of nanoseconds, never across I/O, allocation or a callback), so two
// workers contend only when they touch the same shard at the same instant.
//
// Single flight: a miss reserves a block and returns kFill: the caller reads
// the disk into it and publishes it with complete(). Lookups of that block
// meanwhile return kWait and their CacheWaiter is woken once, on its own
// thread, through its CacheWakeQueue (whose owner supplies how to get there:
// Reactor::post). One disk read serves every concurrent reader.
//
// Pinning: a kHit (or a woken waiter, or a published fill) holds a pinned
// CacheBlock: its memory is not evicted or reused until the handle is reset
// or destroyed, so a copy out of it never races eviction.
//
// Thread: every member is safe from any thread. A CacheBlock belongs to
// whoever holds it (movable across threads). The cache must outlive every
// CacheBlock, CacheImage reference and pending waiter. No guest memory: the
// caller copies out of data() into the guest's pages.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/cache_key.h"
#include "common/result.h"
#include "common/stats.h"

namespace xenpath {

class BlockCache;
class CacheWakeQueue;
class Reactor;

// A snapshot of the cache's counters (global, or one image's).
struct CacheCounters {
  uint64_t hits = 0;               // lookups served from a ready block
  uint64_t misses = 0;             // lookups that became a fill (kFill)
  uint64_t joins = 0;              // lookups that joined a fill in flight (kWait)
  uint64_t bypasses = 0;           // lookups the cache could not take (kBypass)
  uint64_t fills = 0;              // fills published
  uint64_t fill_errors = 0;        // fills that failed or were abandoned
  uint64_t evictions = 0;          // ready blocks evicted to make room
  uint64_t bytes_from_memory = 0;  // bytes of lookups served from cache memory (hits, woken joins)
  uint64_t bytes_from_disk = 0;    // bytes read from disk into the cache by fills
};

// The stats document's form: each member under its own name.
void to_json(nlohmann::json& j, const CacheCounters& c);

// Occupancy (a snapshot; each shard is read under its lock, not all at once).
struct CacheGauges {
  uint64_t blocks = 0;
  uint64_t free = 0;
  uint64_t small = 0;    // ready blocks in the small FIFO
  uint64_t main = 0;     // ready blocks in the main FIFO
  uint64_t filling = 0;  // reserved by a fill in flight
  uint64_t doomed = 0;   // dropped while pinned or filling, freed on release
};

// A handle on one cache block. Either pinned (a hit, a woken waiter's block,
// a published fill): data()/length() are valid and immutable until reset();
// or reserved for filling (filling()): the holder reads into data() (at most
// capacity() bytes) and must call BlockCache::complete() on it. Destroying a
// filling handle abandons the fill (waiters get ECANCELED).
class CacheBlock {
 public:
  CacheBlock() noexcept = default;
  CacheBlock(CacheBlock&& o) noexcept { take(o); }
  CacheBlock& operator=(CacheBlock&& o) noexcept {
    if (this != &o) {
      reset();
      take(o);
    }
    return *this;
  }
  CacheBlock(const CacheBlock&) = delete;
  CacheBlock& operator=(const CacheBlock&) = delete;
  ~CacheBlock() { reset(); }

  explicit operator bool() const noexcept { return r_.cache != nullptr; }
  [[nodiscard]] bool filling() const noexcept { return r_.filling; }
  [[nodiscard]] uint8_t* data() const noexcept { return r_.data; }
  // Valid bytes of a pinned block (the block size, less at the end of an
  // image); 0 while filling.
  [[nodiscard]] uint32_t length() const noexcept { return r_.length; }
  [[nodiscard]] uint32_t capacity() const noexcept { return r_.capacity; }
  // io_uring fixed buffer (index into fixed_buffers()) that holds data().
  [[nodiscard]] unsigned buf_index() const noexcept { return r_.buf_index; }
  // Unpins (or abandons a fill). The handle is empty afterwards.
  void reset() noexcept;

 private:
  friend class BlockCache;
  struct Ref {
    BlockCache* cache = nullptr;  // null: empty handle
    uint8_t* data = nullptr;
    uint32_t slot = 0;
    uint32_t length = 0;
    uint32_t capacity = 0;
    unsigned buf_index = 0;
    bool filling = false;
  };
  explicit CacheBlock(const Ref& r) noexcept : r_(r) {}
  void take(CacheBlock& o) noexcept { r_ = std::exchange(o.r_, Ref{}); }

  Ref r_;
};

// Someone waiting for a fill in flight (embedded in the caller's request
// slot). Registered by lookup() when it returns kWait; on_cache_fill() runs
// exactly once afterwards, on the thread that drains `queue` (the waiter's
// own reactor), never inside lookup() or complete().
class CacheWaiter {
 public:
  explicit CacheWaiter(CacheWakeQueue* queue) noexcept : queue_(queue) {}
  virtual ~CacheWaiter() = default;
  CacheWaiter(const CacheWaiter&) = delete;
  CacheWaiter& operator=(const CacheWaiter&) = delete;

 protected:
  // error 0: `block` is pinned and holds the data. Otherwise a positive
  // errno and an empty block: the fill failed (the filler's error),
  // was abandoned (ECANCELED) or its image was dropped meanwhile (ESTALE).
  virtual void on_cache_fill(CacheBlock block, int error) noexcept = 0;

 private:
  friend class BlockCache;
  friend class CacheWakeQueue;
  CacheWakeQueue* queue_;
  CacheWaiter* next_ = nullptr;
  CacheBlock block_;
  uint32_t bytes_ = 0;
  int error_ = 0;
};

// Where one thread's woken waiters gather. The cache pushes a waiter from
// the thread that completed the fill (any thread); the first push onto an
// empty queue calls `kick` on that thread, which must arrange for drain()
// to run on the owner's thread soon (Reactor::post, an eventfd) and must not
// block. Push is lock-free (a Treiber stack; drain takes the whole list at
// once, so there is no ABA).
//
// Thread: drain() on the owner thread only; the rest any thread. The owner
// must keep the queue alive while any of its waiters is registered.
class CacheWakeQueue {
 public:
  using Kick = std::function<void()>;
  explicit CacheWakeQueue(Kick kick) noexcept : kick_(std::move(kick)) {}
  CacheWakeQueue(const CacheWakeQueue&) = delete;
  CacheWakeQueue& operator=(const CacheWakeQueue&) = delete;

  // A queue drained on `reactor` (kick = post a drain task). The task holds
  // only a weak reference, so the queue may go away with a drain queued.
  static std::shared_ptr<CacheWakeQueue> on_reactor(Reactor& reactor);

  // Owner thread: runs on_cache_fill() of every waiter woken so far, in the
  // order they were woken. Returns how many.
  size_t drain() noexcept;
  [[nodiscard]] bool empty() const noexcept { return head_.load(std::memory_order_acquire) == nullptr; }

 private:
  friend class BlockCache;
  void push(CacheWaiter* w) noexcept;

  std::atomic<CacheWaiter*> head_{nullptr};
  Kick kick_;
};

// Per-image counters, written under the shard lock that covers the block
// (one stripe per shard, so no two threads write the same line at once).
struct alignas(64) CacheStatStripe {
  Counter hits, misses, joins, bypasses, fills, fill_errors, evictions, bytes_from_memory, bytes_from_disk;
  void add_to(CacheCounters& c) const noexcept;
};

// One base image registered with the cache: what a channel passes to
// lookup(). Obtained from BlockCache::open() as a shared_ptr whose last copy
// releases that open (the registry's reference).
class CacheImage {
 public:
  [[nodiscard]] IdentityId id() const noexcept { return id_; }
  [[nodiscard]] const ImageIdentity& identity() const noexcept { return ident_; }
  // Retired: its file changed underneath (or it was replaced); lookups say
  // kBypass. The owner should reopen the file and open() it again.
  [[nodiscard]] bool retired() const noexcept { return retired_.load(std::memory_order_acquire); }
  [[nodiscard]] CacheCounters counters() const noexcept;

  CacheImage(IdentityId id, const ImageIdentity& ident, unsigned shards);

 private:
  friend class BlockCache;
  IdentityId id_;
  ImageIdentity ident_;
  std::atomic<bool> retired_{false};
  std::atomic<uint64_t> retired_bypasses_{0};
  unsigned stripe_count_;
  std::unique_ptr<CacheStatStripe[]> stripes_;  // one per shard of the cache
};

class BlockCache {
 public:
  enum class Policy : uint8_t {
    kS3Fifo,  // the cache's policy
    kFifo,    // plain FIFO, no frequency, no ghost: only to measure the policy against
  };
  struct Options {
    uint64_t budget_bytes = uint64_t{256} << 20;
    uint32_t block_size = 64 << 10;  // a power of two, 4 KiB..2 MiB
    unsigned shards = 0;             // 0: as many as give >= 128 blocks each, at most 64
    unsigned small_percent = 10;     // S3-FIFO small queue share of each shard, 1..50
    Policy policy = Policy::kS3Fifo;
    bool populate = true;  // fault the arena in at create() (no page faults on the datapath)
  };

  // EINVAL for a block size or budget that does not make at least one block
  // per shard, ENOMEM.
  static Result<std::unique_ptr<BlockCache>> create(const Options& opts) noexcept;
  ~BlockCache();
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // Registers an open of the image with this identity (control path: one
  // registry mutex). The same identity shares one CacheImage; a file seen
  // with new attributes retires its old CacheImage and drops its entries.
  Result<std::shared_ptr<CacheImage>> open(const ImageIdentity& ident) noexcept;
  // A fresh fstat of an open image's file: when it differs from what the
  // image was opened with, retires it and drops its entries (true).
  bool revalidate(CacheImage& image, const ImageIdentity& now) noexcept;

  enum class Outcome : uint8_t { kHit, kFill, kWait, kBypass };
  struct Lookup {
    Outcome outcome = Outcome::kBypass;
    CacheBlock block;  // kHit: pinned; kFill: reserved for the caller to fill
  };
  // The datapath call. `bytes` is how many bytes of the block the caller
  // will copy (for the bytes-from-memory counters). `waiter` (may be null:
  // then a block being filled is kBypass) is registered on kWait only.
  Lookup lookup(CacheImage& image, uint64_t block, uint32_t bytes, CacheWaiter* waiter) noexcept;
  // Publishes a fill: result = bytes read into the block (1..capacity, the
  // image's tail may be short) or a negative errno. On success `fill`
  // becomes a pinned handle on the published block (the filler copies its
  // own bytes from it); on failure it is emptied, the entry is dropped and
  // the waiters get the error. Then each waiter is pushed to its queue.
  void complete(CacheBlock& fill, int result) noexcept;

  // Drops every entry of an image (operator command, changed file); blocks
  // being filled or pinned go once released. Returns how many entries.
  size_t drop(IdentityId id) noexcept;
  // Drops everything (and forgets the ghost history).
  size_t drop_all() noexcept;

  [[nodiscard]] CacheCounters counters() const noexcept;
  [[nodiscard]] CacheGauges gauges() const noexcept;
  // Every open image (control path): id, identity, counters.
  [[nodiscard]] std::vector<std::shared_ptr<const CacheImage>> images() const;
  // The arena as io_uring fixed buffers: each at most 1 GiB and a whole
  // number of blocks, in order (CacheBlock::buf_index() indexes this).
  [[nodiscard]] std::vector<iovec> fixed_buffers() const;
  [[nodiscard]] uint32_t block_size() const noexcept { return block_size_; }
  [[nodiscard]] uint64_t blocks() const noexcept { return blocks_; }
  [[nodiscard]] unsigned shards() const noexcept { return shard_count_; }
  [[nodiscard]] const Options& options() const noexcept { return opts_; }

  // Walks every shard and checks the structure (index, queues, free list,
  // states, counts). "" when consistent, else what is wrong. Tests, fuzzing.
  [[nodiscard]] std::string check() const;

 private:
  struct Slot;
  struct Shard;
  friend class CacheBlock;

  explicit BlockCache(const Options& opts);
  void release(CacheBlock& h) noexcept;
  void close(CacheImage* image) noexcept;
  [[nodiscard]] uint32_t shard_of_slot(uint32_t slot) const noexcept { return slot / per_shard_; }
  [[nodiscard]] unsigned shard_of_hash(uint64_t hash) const noexcept {
    return shard_count_ == 1 ? 0 : static_cast<unsigned>(hash >> shard_shift_);
  }
  [[nodiscard]] uint8_t* slot_data(uint32_t slot) const noexcept { return arena_ + uint64_t{slot} * block_size_; }
  [[nodiscard]] unsigned slot_buf_index(uint32_t slot) const noexcept { return slot / blocks_per_buffer_; }
  CacheBlock handle(uint32_t slot, bool filling) noexcept;
  uint32_t take_slot(Shard& s, unsigned shard_index) noexcept;
  void evict(Shard& s, unsigned shard_index, uint32_t slot) noexcept;
  void unindex(Shard& s, uint32_t slot) noexcept;
  void free_slot(Shard& s, uint32_t slot) noexcept;
  size_t drop_where(bool all, IdentityId id) noexcept;
  void retire(CacheImage& image) noexcept;

  Options opts_;
  uint32_t block_size_ = 0;
  uint64_t blocks_ = 0;
  unsigned shard_count_ = 0;
  unsigned shard_shift_ = 0;  // hash >> shift = shard (the high bits; unused with one shard)
  uint32_t per_shard_ = 0;
  uint32_t blocks_per_buffer_ = 0;
  uint8_t* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  std::unique_ptr<Slot[]> slots_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<uint64_t> retired_bypasses_{0};

  mutable std::mutex images_mu_;  // control path only: open/close/list
  IdentityRegistry registry_;
  std::unordered_map<IdentityId, std::shared_ptr<CacheImage>> images_;
};

}  // namespace xenpath
