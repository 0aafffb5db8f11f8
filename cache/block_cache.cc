#include "cache/block_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <new>
#include <nlohmann/json.hpp>

#include "cache/cache_table.h"
#include "common/reactor.h"

namespace xenpath {

void to_json(nlohmann::json& j, const CacheCounters& c) {
  j = {{"hits", c.hits},
       {"misses", c.misses},
       {"joins", c.joins},
       {"bypasses", c.bypasses},
       {"fills", c.fills},
       {"fill_errors", c.fill_errors},
       {"evictions", c.evictions},
       {"bytes_from_memory", c.bytes_from_memory},
       {"bytes_from_disk", c.bytes_from_disk}};
}

namespace {

constexpr uint32_t kNil = UINT32_MAX;
constexpr uint32_t kMinBlock = 4 << 10;
constexpr uint32_t kMaxBlock = 2 << 20;
constexpr unsigned kMaxShards = 64;
constexpr uint64_t kMinBlocksPerShard = 128;
// io_uring_register_buffers takes buffers of at most 1 GiB each.
constexpr uint64_t kMaxFixedBuffer = uint64_t{1} << 30;
constexpr uint8_t kMaxFreq = 3;  // S3-FIFO's 2-bit access count

enum class SlotState : uint8_t {
  kFree,     // on its shard's free list
  kFilling,  // indexed, reserved by a fill in flight (pinned by the filler)
  kReady,    // indexed, in the small or main FIFO
  kDoomed,   // dropped while pinned or filling: not indexed, freed at the last release
};
enum class QueueId : uint8_t { kNone, kSmall, kMain };

struct List {
  uint32_t head = kNil;  // oldest
  uint32_t tail = kNil;  // newest
  uint32_t size = 0;
};

}  // namespace

struct BlockCache::Slot {
  BlockKey key;
  uint64_t hash = 0;
  CacheImage* image = nullptr;     // null once dropped (the image may be gone)
  CacheWaiter* waiters = nullptr;  // joined a fill in flight (newest first)
  uint32_t prev = kNil;            // queue links; `next` also links the free list
  uint32_t next = kNil;
  uint32_t refs = 0;  // pins (the filler's, hits', woken waiters')
  uint32_t length = 0;
  SlotState state = SlotState::kFree;
  QueueId queue = QueueId::kNone;
  uint8_t freq = 0;
  bool admit_main = false;  // a ghost hit: published straight into main
};

struct alignas(64) BlockCache::Shard {
  Shard(uint32_t first_slot, uint32_t slots, uint32_t small)
      : first(first_slot), count(slots), small_target(small), index(slots, kNil), ghost(slots - small) {}

  std::mutex mu;
  const uint32_t first;
  const uint32_t count;
  const uint32_t small_target;
  cache_detail::ProbeTable<uint32_t> index;  // slot numbers of kFilling and kReady slots
  cache_detail::GhostFifo ghost;
  List small;
  List main;
  uint32_t free_head = kNil;
  uint32_t free_count = 0;
  uint32_t filling = 0;
  uint32_t doomed = 0;
  CacheStatStripe stats;
};

namespace {

template <typename SlotT>
void push_back(SlotT* slots, List& l, uint32_t i) noexcept {
  slots[i].prev = l.tail;
  slots[i].next = kNil;
  if (l.tail != kNil) {
    slots[l.tail].next = i;
  } else {
    l.head = i;
  }
  l.tail = i;
  ++l.size;
}

template <typename SlotT>
void unlink(SlotT* slots, List& l, uint32_t i) noexcept {
  SlotT& t = slots[i];
  if (t.prev != kNil) {
    slots[t.prev].next = t.next;
  } else {
    l.head = t.next;
  }
  if (t.next != kNil) {
    slots[t.next].prev = t.prev;
  } else {
    l.tail = t.prev;
  }
  t.prev = t.next = kNil;
  --l.size;
}

void bump(CacheStatStripe& shard, CacheImage* image, CacheStatStripe* image_stripe, Counter CacheStatStripe::*field,
          uint64_t n = 1) noexcept {
  (shard.*field).add(n);
  if (image != nullptr) (image_stripe->*field).add(n);
}

}  // namespace

void CacheStatStripe::add_to(CacheCounters& c) const noexcept {
  c.hits += hits.get();
  c.misses += misses.get();
  c.joins += joins.get();
  c.bypasses += bypasses.get();
  c.fills += fills.get();
  c.fill_errors += fill_errors.get();
  c.evictions += evictions.get();
  c.bytes_from_memory += bytes_from_memory.get();
  c.bytes_from_disk += bytes_from_disk.get();
}

CacheImage::CacheImage(IdentityId id, const ImageIdentity& ident, unsigned shards)
    : id_(id), ident_(ident), stripe_count_(shards), stripes_(new CacheStatStripe[shards]) {}

// ---------------------------------------------------------------- handles

void CacheBlock::reset() noexcept {
  if (r_.cache == nullptr) return;
  if (r_.filling) {
    r_.cache->complete(*this, -ECANCELED);
  } else {
    r_.cache->release(*this);
  }
  r_ = Ref{};
}

void CacheWakeQueue::push(CacheWaiter* w) noexcept {
  CacheWaiter* old = head_.load(std::memory_order_relaxed);
  do {
    w->next_ = old;
  } while (!head_.compare_exchange_weak(old, w, std::memory_order_release, std::memory_order_relaxed));
  if (old == nullptr && kick_) kick_();
}

size_t CacheWakeQueue::drain() noexcept {
  CacheWaiter* list = head_.exchange(nullptr, std::memory_order_acquire);
  CacheWaiter* in_order = nullptr;  // the stack is newest first
  while (list != nullptr) {
    CacheWaiter* next = list->next_;
    list->next_ = in_order;
    in_order = list;
    list = next;
  }
  size_t n = 0;
  while (in_order != nullptr) {
    CacheWaiter* w = in_order;
    in_order = w->next_;  // read first: the callback may register `w` again
    w->next_ = nullptr;
    CacheBlock block = std::move(w->block_);
    ++n;
    w->on_cache_fill(std::move(block), w->error_);
  }
  return n;
}

std::shared_ptr<CacheWakeQueue> CacheWakeQueue::on_reactor(Reactor& reactor) {
  auto q = std::make_shared<CacheWakeQueue>(nullptr);
  std::weak_ptr<CacheWakeQueue> weak = q;
  q->kick_ = [&reactor, weak] {
    reactor.post([weak] {
      if (auto live = weak.lock()) live->drain();
    });
  };
  return q;
}

// ---------------------------------------------------------------- create

BlockCache::BlockCache(const Options& opts) : opts_(opts) {}

Result<std::unique_ptr<BlockCache>> BlockCache::create(const Options& opts) noexcept {
  if (!std::has_single_bit(opts.block_size) || opts.block_size < kMinBlock || opts.block_size > kMaxBlock) {
    return unexpected(EINVAL);
  }
  if (opts.small_percent < 1 || opts.small_percent > 50) return unexpected(EINVAL);
  uint64_t blocks = opts.budget_bytes / opts.block_size;
  unsigned shards = opts.shards;
  if (shards == 0) {
    shards = kMaxShards;
    while (shards > 1 && blocks / shards < kMinBlocksPerShard) shards /= 2;
  }
  if (!std::has_single_bit(shards) || shards > kMaxShards || blocks < shards) return unexpected(EINVAL);
  const uint64_t per_shard = blocks / shards;
  // Slot numbers are 32-bit with one value reserved (kNil).
  if (per_shard * shards >= kNil) return unexpected(EINVAL);
  blocks = per_shard * shards;

  std::unique_ptr<BlockCache> c;
  try {
    c.reset(new BlockCache(opts));
    c->block_size_ = opts.block_size;
    c->blocks_ = blocks;
    c->shard_count_ = shards;
    c->shard_shift_ = 64 - static_cast<unsigned>(std::countr_zero(shards));
    c->per_shard_ = static_cast<uint32_t>(per_shard);
    c->blocks_per_buffer_ = static_cast<uint32_t>(std::max<uint64_t>(1, kMaxFixedBuffer / opts.block_size));
    c->slots_.reset(new Slot[blocks]);
    const auto small = static_cast<uint32_t>(std::max<uint64_t>(1, per_shard * opts.small_percent / 100));
    for (unsigned s = 0; s < shards; ++s) {
      auto shard = std::make_unique<Shard>(static_cast<uint32_t>(s * per_shard), static_cast<uint32_t>(per_shard),
                                           small < per_shard ? small : static_cast<uint32_t>(per_shard - 1));
      c->shards_.push_back(std::move(shard));
    }
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
  // Free lists, lowest slot first.
  for (auto& s : c->shards_) {
    for (uint32_t i = s->first + s->count; i-- > s->first;) c->free_slot(*s, i);
  }

  c->arena_bytes_ = blocks * opts.block_size;
  void* p = ::mmap(nullptr, c->arena_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return unexpected_errno();
  c->arena_ = static_cast<uint8_t*>(p);
  // Huge pages where the kernel has them: fewer TLB misses for the copies
  // out of the cache (advice only; failure changes nothing).
  (void)::madvise(p, c->arena_bytes_, MADV_HUGEPAGE);
  if (opts.populate) {
#ifdef MADV_POPULATE_WRITE
    if (::madvise(p, c->arena_bytes_, MADV_POPULATE_WRITE) != 0)
#endif
    {
      for (size_t off = 0; off < c->arena_bytes_; off += 4096) c->arena_[off] = 0;
    }
  }
  return c;
}

BlockCache::~BlockCache() {
  if (arena_ != nullptr) ::munmap(arena_, arena_bytes_);
}

std::vector<iovec> BlockCache::fixed_buffers() const {
  std::vector<iovec> out;
  const uint64_t per = uint64_t{blocks_per_buffer_} * block_size_;
  for (uint64_t off = 0; off < arena_bytes_; off += per) {
    out.push_back(iovec{arena_ + off, static_cast<size_t>(std::min(per, arena_bytes_ - off))});
  }
  return out;
}

// ---------------------------------------------------------------- images

Result<std::shared_ptr<CacheImage>> BlockCache::open(const ImageIdentity& ident) noexcept {
  CacheImage* raw = nullptr;
  {
    std::lock_guard lock(images_mu_);
    auto acq = registry_.acquire(ident);
    if (!acq) return unexpected(acq.error());
    if (acq->replaced != kNoIdentity) {
      auto old = images_.find(acq->replaced);
      if (old != images_.end()) retire(*old->second);
    }
    if (acq->fresh) {
      try {
        auto img = std::make_shared<CacheImage>(acq->id, ident, shard_count_);
        raw = img.get();
        images_.emplace(acq->id, std::move(img));
      } catch (const std::bad_alloc&) {
        (void)registry_.release(acq->id);
        return unexpected(ENOMEM);
      }
    } else {
      raw = images_.at(acq->id).get();
    }
  }
  // The caller's reference releases this open when its last copy goes. On
  // bad_alloc the shared_ptr constructor runs the deleter (the release).
  try {
    return std::shared_ptr<CacheImage>(raw, [this](CacheImage* p) { close(p); });
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
}

void BlockCache::close(CacheImage* image) noexcept {
  std::lock_guard lock(images_mu_);
  if (!registry_.release(image->id_)) return;
  // Entries of a retired image were dropped at retirement, but a lookup that
  // passed its retired() check just before may have started a fill since.
  (void)drop_where(false, image->id_);
  images_.erase(image->id_);
}

void BlockCache::retire(CacheImage& image) noexcept {
  image.retired_.store(true, std::memory_order_release);
  (void)drop_where(false, image.id_);
}

bool BlockCache::revalidate(CacheImage& image, const ImageIdentity& now) noexcept {
  std::lock_guard lock(images_mu_);
  if (!registry_.retire_if_changed(image.id_, now)) return false;
  if (!image.retired()) retire(image);
  return true;
}

std::vector<std::shared_ptr<const CacheImage>> BlockCache::images() const {
  std::lock_guard lock(images_mu_);
  std::vector<std::shared_ptr<const CacheImage>> out;
  for (const auto& [id, img] : images_) out.push_back(img);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->id() < b->id(); });
  return out;
}

// ---------------------------------------------------------------- datapath

CacheBlock BlockCache::handle(uint32_t slot, bool filling) noexcept {
  return CacheBlock(CacheBlock::Ref{this, slot_data(slot), slot, filling ? 0 : slots_[slot].length, block_size_,
                                    slot_buf_index(slot), filling});
}

BlockCache::Lookup BlockCache::lookup(CacheImage& image, uint64_t block, uint32_t bytes, CacheWaiter* waiter) noexcept {
  Lookup out;
  if (image.retired()) {
    image.retired_bypasses_.fetch_add(1, std::memory_order_relaxed);
    retired_bypasses_.fetch_add(1, std::memory_order_relaxed);
    return out;
  }
  const BlockKey key{image.id_, block};
  const uint64_t h = block_key_hash(key);
  const unsigned si = shard_of_hash(h);
  Shard& s = *shards_[si];
  CacheStatStripe* is = &image.stripes_[si];
  std::lock_guard lock(s.mu);
  uint32_t* cell = s.index.find(h, [&](uint32_t v) { return slots_[v].hash == h && slots_[v].key == key; });
  if (cell != nullptr) {
    const uint32_t i = *cell;
    Slot& t = slots_[i];
    if (t.state == SlotState::kReady) {
      ++t.refs;
      if (t.freq < kMaxFreq) ++t.freq;
      bump(s.stats, &image, is, &CacheStatStripe::hits);
      bump(s.stats, &image, is, &CacheStatStripe::bytes_from_memory, bytes);
      out.outcome = Outcome::kHit;
      out.block = handle(i, false);
      return out;
    }
    // kFilling: join the fill in flight.
    if (waiter == nullptr) {
      bump(s.stats, &image, is, &CacheStatStripe::bypasses);
      return out;
    }
    waiter->next_ = t.waiters;
    waiter->bytes_ = bytes;
    waiter->error_ = 0;
    t.waiters = waiter;
    if (t.freq < kMaxFreq) ++t.freq;  // a concurrent reader is an access
    bump(s.stats, &image, is, &CacheStatStripe::joins);
    out.outcome = Outcome::kWait;
    return out;
  }
  // Asked before making room: the eviction may push this very key out of the ghost.
  const bool ghost_hit = opts_.policy == Policy::kFifo || s.ghost.contains(h);
  const uint32_t i = take_slot(s, si);
  if (i == kNil) {
    bump(s.stats, &image, is, &CacheStatStripe::bypasses);
    return out;
  }
  Slot& t = slots_[i];
  t.key = key;
  t.hash = h;
  t.image = &image;
  t.waiters = nullptr;
  t.refs = 1;
  t.length = 0;
  t.freq = 0;
  t.state = SlotState::kFilling;
  t.queue = QueueId::kNone;
  t.admit_main = ghost_hit;
  (void)s.index.insert(h, i);  // room for every slot of the shard
  ++s.filling;
  bump(s.stats, &image, is, &CacheStatStripe::misses);
  out.outcome = Outcome::kFill;
  out.block = handle(i, true);
  return out;
}

void BlockCache::complete(CacheBlock& fill, int result) noexcept {
  if (fill.r_.cache != this || !fill.r_.filling) return;
  const uint32_t i = fill.r_.slot;
  const unsigned si = shard_of_slot(i);
  Shard& s = *shards_[si];
  Slot& t = slots_[i];
  CacheWaiter* waiters = nullptr;
  int error = 0;
  {
    std::lock_guard lock(s.mu);
    CacheImage* img = t.image;
    CacheStatStripe* is = img != nullptr ? &img->stripes_[si] : nullptr;
    // Wake in the order they joined.
    for (CacheWaiter* w = t.waiters; w != nullptr;) {
      CacheWaiter* next = w->next_;
      w->next_ = waiters;
      waiters = w;
      w = next;
    }
    t.waiters = nullptr;
    if (t.state == SlotState::kDoomed) {
      error = ESTALE;  // dropped while it was read: the data may be of the old file
      --s.doomed;
      free_slot(s, i);
    } else if (result <= 0 || static_cast<uint32_t>(result) > block_size_) {
      error = result < 0 ? -result : EIO;
      --s.filling;
      unindex(s, i);
      free_slot(s, i);
      bump(s.stats, img, is, &CacheStatStripe::fill_errors);
    } else {
      --s.filling;
      t.state = SlotState::kReady;
      t.length = static_cast<uint32_t>(result);
      t.queue = t.admit_main ? QueueId::kMain : QueueId::kSmall;
      push_back(slots_.get(), t.admit_main ? s.main : s.small, i);
      bump(s.stats, img, is, &CacheStatStripe::fills);
      bump(s.stats, img, is, &CacheStatStripe::bytes_from_disk, static_cast<uint64_t>(result));
      for (CacheWaiter* w = waiters; w != nullptr; w = w->next_) {
        ++t.refs;
        bump(s.stats, img, is, &CacheStatStripe::bytes_from_memory, w->bytes_);
      }
      // The filler's pin stays: `fill` becomes a pinned handle.
    }
  }
  // Outside the lock: each waiter holds its own pin (or needs none), and a
  // kick may post to a reactor.
  while (waiters != nullptr) {
    CacheWaiter* w = waiters;
    waiters = w->next_;
    w->error_ = error;
    if (error == 0) w->block_ = handle(i, false);
    w->queue_->push(w);
  }
  if (error == 0) {
    fill.r_.filling = false;
    fill.r_.length = static_cast<uint32_t>(result);
  } else {
    fill.r_ = CacheBlock::Ref{};
  }
}

void BlockCache::release(CacheBlock& h) noexcept {
  const uint32_t i = h.r_.slot;
  Shard& s = *shards_[shard_of_slot(i)];
  std::lock_guard lock(s.mu);
  Slot& t = slots_[i];
  if (--t.refs == 0 && t.state == SlotState::kDoomed) {
    --s.doomed;
    free_slot(s, i);
  }
  h.r_ = CacheBlock::Ref{};
}

// ---------------------------------------------------------------- policy

void BlockCache::free_slot(Shard& s, uint32_t i) noexcept {
  Slot& t = slots_[i];
  t = Slot{};
  t.next = s.free_head;
  s.free_head = i;
  ++s.free_count;
}

void BlockCache::unindex(Shard& s, uint32_t i) noexcept {
  uint32_t* cell = s.index.find(slots_[i].hash, [i](uint32_t v) { return v == i; });
  if (cell != nullptr) s.index.erase(cell, [this](uint32_t v) { return slots_[v].hash; });
}

void BlockCache::evict(Shard& s, unsigned si, uint32_t i) noexcept {
  Slot& t = slots_[i];
  unindex(s, i);
  bump(s.stats, t.image, t.image != nullptr ? &t.image->stripes_[si] : nullptr, &CacheStatStripe::evictions);
  t = Slot{};
}

// S3-FIFO (Yang et al., SOSP '23), per shard. A new block enters the small
// FIFO (or main, after a ghost hit). Evicting from small: a block accessed
// since it was inserted moves to main, one that was not is evicted and its
// key remembered in the ghost FIFO; so a one-pass scan only ever churns the
// small FIFO. Evicting from main: a block with accesses left loses one and
// goes round again (CLOCK with a 2-bit count). Small is evicted from while it
// holds at least its share (or main is empty), main otherwise. Pinned blocks
// go round without losing anything. Each step evicts, promotes, spends an
// access or passes a pin, so 5 steps per slot bound the loop; the result is
// kNil only when no queued block could be freed (all pinned or filling).
uint32_t BlockCache::take_slot(Shard& s, unsigned si) noexcept {
  if (s.free_head != kNil) {
    const uint32_t i = s.free_head;
    s.free_head = slots_[i].next;
    slots_[i].next = kNil;
    --s.free_count;
    return i;
  }
  Slot* slots = slots_.get();
  uint32_t pinned_small = 0;  // pinned blocks passed over in a row
  uint32_t pinned_main = 0;
  // Takes the oldest block of `l` into `i`; a pinned one goes round (false).
  auto take_oldest = [slots](List& l, uint32_t& pinned, uint32_t& i) {
    i = l.head;
    unlink(slots, l, i);
    if (slots[i].refs > 0) {
      push_back(slots, l, i);
      ++pinned;
      return false;
    }
    pinned = 0;
    return true;
  };
  const uint64_t max_steps = 5 * uint64_t{s.count} + 8;
  for (uint64_t step = 0; step < max_steps; ++step) {
    const bool small_usable = s.small.size > 0 && pinned_small < s.small.size;
    const bool main_usable = s.main.size > 0 && pinned_main < s.main.size;
    if (opts_.policy == Policy::kFifo) {
      if (!main_usable) return kNil;
    } else if (small_usable && (s.small.size >= s.small_target || !main_usable)) {
      uint32_t i;
      if (!take_oldest(s.small, pinned_small, i)) continue;
      Slot& t = slots[i];
      if (t.freq > 0) {
        t.freq = 0;
        t.queue = QueueId::kMain;
        push_back(slots, s.main, i);
        continue;
      }
      s.ghost.add(t.hash);
      evict(s, si, i);
      return i;
    } else if (!main_usable) {
      return kNil;
    }
    uint32_t i;
    if (!take_oldest(s.main, pinned_main, i)) continue;
    Slot& t = slots[i];
    if (t.freq > 0 && opts_.policy != Policy::kFifo) {
      --t.freq;
      push_back(slots, s.main, i);
      continue;
    }
    evict(s, si, i);
    return i;
  }
  return kNil;
}

size_t BlockCache::drop_where(bool all, IdentityId id) noexcept {
  size_t n = 0;
  for (auto& sp : shards_) {
    Shard& s = *sp;
    std::lock_guard lock(s.mu);
    for (uint32_t i = s.first; i < s.first + s.count; ++i) {
      Slot& t = slots_[i];
      if (t.state != SlotState::kReady && t.state != SlotState::kFilling) continue;
      if (!all && t.key.image != id) continue;
      ++n;
      unindex(s, i);
      if (t.state == SlotState::kReady) {
        unlink(slots_.get(), t.queue == QueueId::kMain ? s.main : s.small, i);
        t.queue = QueueId::kNone;
      } else {
        --s.filling;
      }
      t.image = nullptr;
      if (t.refs == 0) {
        free_slot(s, i);
      } else {
        t.state = SlotState::kDoomed;
        ++s.doomed;
      }
    }
    if (all) s.ghost.clear();
  }
  return n;
}

size_t BlockCache::drop(IdentityId id) noexcept { return drop_where(false, id); }
size_t BlockCache::drop_all() noexcept { return drop_where(true, kNoIdentity); }

// ---------------------------------------------------------------- stats

CacheCounters CacheImage::counters() const noexcept {
  CacheCounters c;
  for (unsigned i = 0; i < stripe_count_; ++i) stripes_[i].add_to(c);
  c.bypasses += retired_bypasses_.load(std::memory_order_relaxed);
  return c;
}

CacheCounters BlockCache::counters() const noexcept {
  CacheCounters c;
  for (const auto& s : shards_) s->stats.add_to(c);
  c.bypasses += retired_bypasses_.load(std::memory_order_relaxed);
  return c;
}

CacheGauges BlockCache::gauges() const noexcept {
  CacheGauges g;
  g.blocks = blocks_;
  for (const auto& sp : shards_) {
    std::lock_guard lock(sp->mu);
    g.free += sp->free_count;
    g.small += sp->small.size;
    g.main += sp->main.size;
    g.filling += sp->filling;
    g.doomed += sp->doomed;
  }
  return g;
}

std::string BlockCache::check() const {
  std::string err;
  auto fail = [&err](unsigned si, const std::string& what) {
    if (err.empty()) err = "shard " + std::to_string(si) + ": " + what;
  };
  for (unsigned si = 0; si < shard_count_; ++si) {
    Shard& s = *shards_[si];
    std::lock_guard lock(s.mu);
    const Slot* slots = slots_.get();
    auto in_shard = [&](uint32_t i) { return i >= s.first && i < s.first + s.count; };
    // Free list.
    uint32_t n = 0;
    for (uint32_t i = s.free_head; i != kNil && n <= s.count; i = slots[i].next, ++n) {
      if (!in_shard(i) || slots[i].state != SlotState::kFree) fail(si, "free list holds a used or foreign slot");
    }
    if (n != s.free_count) fail(si, "free count " + std::to_string(s.free_count) + " != list " + std::to_string(n));
    // Queues.
    auto walk = [&](const List& l, QueueId q, const char* name) {
      uint32_t k = 0;
      uint32_t prev = kNil;
      for (uint32_t i = l.head; i != kNil && k <= s.count; i = slots[i].next, ++k) {
        const Slot& t = slots[i];
        if (!in_shard(i) || t.state != SlotState::kReady || t.queue != q || t.prev != prev) {
          fail(si, std::string(name) + " queue holds a bad slot");
        }
        if (t.length == 0 || t.length > block_size_) fail(si, "ready block with a bad length");
        if (t.waiters != nullptr) fail(si, "ready block with waiters");
        prev = i;
      }
      if (k != l.size || l.tail != prev) fail(si, std::string(name) + " queue size/tail mismatch");
    };
    walk(s.small, QueueId::kSmall, "small");
    walk(s.main, QueueId::kMain, "main");
    // States, counts and the index.
    uint32_t ready = 0, filling = 0, doomed = 0, free = 0;
    for (uint32_t i = s.first; i < s.first + s.count; ++i) {
      const Slot& t = slots[i];
      switch (t.state) {
        case SlotState::kFree:
          ++free;
          if (t.refs != 0) fail(si, "free slot pinned");
          break;
        case SlotState::kFilling:
          ++filling;
          if (t.refs != 1) fail(si, "filling slot not pinned once (by its filler)");
          break;
        case SlotState::kReady:
          ++ready;
          break;
        case SlotState::kDoomed:
          ++doomed;
          if (t.refs == 0 && t.waiters == nullptr) fail(si, "doomed slot nobody holds");
          break;
      }
      const bool indexed = t.state == SlotState::kReady || t.state == SlotState::kFilling;
      uint32_t* cell = s.index.find(t.hash, [i](uint32_t v) { return v == i; });
      if (indexed && t.hash != block_key_hash(t.key)) fail(si, "slot hash does not match its key");
      if (indexed != (cell != nullptr)) fail(si, "index and slot state disagree");
      if (indexed && shard_of_hash(t.hash) != si) fail(si, "slot in the wrong shard");
    }
    if (ready != s.small.size + s.main.size) fail(si, "ready slots not all queued");
    if (filling != s.filling || doomed != s.doomed || free != s.free_count) fail(si, "gauges disagree with slots");
    if (s.index.size() != ready + filling) fail(si, "index size");
    if (ready + filling + doomed + free != s.count) fail(si, "slots lost");
  }
  return err;
}

}  // namespace xenpath
