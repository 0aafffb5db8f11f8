// VhdChannel's reads: one run at a time (step_read: which level, or none,
// holds the sectors), read straight into the guest's pages or through the
// shared read cache for immutable levels (read_cached, piece_ready), and
// the per-channel bitmap cache (open-addressing index, LRU of idle slots,
// asynchronous loads that set the fully-allocated bits). See image_vhd.h.
#include <algorithm>
#include <cstring>
#include <span>

#include "blkback/image_vhd_channel.h"

namespace xenpath {

using vhd_io::kSector;

void VhdChannel::fill_guest(Req& r, const uint8_t* src, uint64_t bytes) noexcept {
  while (bytes != 0 && r.iv < r.iovcnt) {
    const iovec& v = r.iov[r.iv];
    const size_t take = static_cast<size_t>(std::min<uint64_t>(v.iov_len - r.ivoff, bytes));
    if (src != nullptr) {
      std::memcpy(static_cast<char*>(v.iov_base) + r.ivoff, src, take);
      src += take;
    } else {
      std::memset(static_cast<char*>(v.iov_base) + r.ivoff, 0, take);
    }
    bytes -= take;
    r.pos += take;
    r.ivoff += take;
    if (r.ivoff == v.iov_len) {
      ++r.iv;
      r.ivoff = 0;
    }
  }
}

// One run of a read: the sectors from r.pos that one level (or none) holds,
// inside one block. False when the request parked.
bool VhdChannel::step_read(Req& r) noexcept {
  const uint64_t sector = r.pos / kSector;
  const auto block = static_cast<uint32_t>(sector / spb());
  const auto first = static_cast<uint32_t>(sector % spb());
  uint32_t limit = static_cast<uint32_t>(std::min<uint64_t>(spb() - first, (r.end - r.pos) / kSector));
  const size_t depth = image_.chain_.levels.size();
  for (size_t i = 0; i < depth; ++i) {
    const VhdLevel& l = level(i);
    uint64_t file_off = 0;
    if (!l.sparse()) {
      // Fixed: the data at its virtual offset, as far as the file's disk goes.
      file_off = r.pos;
      const uint64_t avail = file_off < l.virtual_size() ? (l.virtual_size() - file_off) / kSector : 0;
      if (avail == 0) continue;
      limit = static_cast<uint32_t>(std::min<uint64_t>(limit, avail));
    } else {
      if (block >= l.bat.size() || l.bat[block] == vhd::kBatUnused) continue;
      const uint32_t entry = l.bat[block];
      file_off = l.layout.sector_offset(entry, first);
      if (full(i, block)) {
        ++vstats.full_hits;
      } else {
        Slot* slot = bitmap_for(r, static_cast<uint8_t>(i), block);
        if (slot == nullptr) return false;
        const std::span<const uint8_t> map(slot->bits.get(), l.layout.bitmap_bytes);
        const uint32_t run = vhd::bitmap_run(map, first, limit);
        if (!vhd::bitmap_test(map, first)) {
          limit = run;  // not here: what is below decides these sectors
          continue;
        }
        limit = run;
      }
    }
    const auto lvl = static_cast<uint8_t>(i);
    CacheImage* ci = image_.cache_on_.load(std::memory_order_relaxed) ? image_.cache_image(i) : nullptr;
    if (ci != nullptr) return read_cached(r, lvl, *ci, file_off, uint64_t{limit} * kSector);
    return read_direct(r, lvl, file_off, uint64_t{limit} * kSector);
  }
  ++vstats.zero_fills;
  fill_guest(r, nullptr, uint64_t{limit} * kSector);
  return true;
}

// Reads `bytes` of the level's file at `file_off` straight into the guest's
// pages (one readv). False when the request parked.
bool VhdChannel::read_direct(Req& r, uint8_t lvl, uint64_t file_off, uint64_t bytes) noexcept {
  SubOp* s = new_sub(SubOp::Role::kData, lvl);
  if (s == nullptr) {
    park(r, resource_waiters_);
    return false;
  }
  const size_t got = take_iov(r, *s, bytes);
  s->req = &r;
  ++r.pending;
  ++vstats.data_ops;
  s->prep_read(s->iov, s->nio, file_off);
  r.pos += got;
  start(*s);
  return true;
}

// The part of a run of an immutable level inside one cache block, through
// the shared cache (docs/cache.md, the image layer's contract). False when
// the request parked.
bool VhdChannel::read_cached(Req& r, uint8_t lvl, CacheImage& ci, uint64_t file_off, uint64_t bytes) noexcept {
  BlockCache& cache = *image_.cache_;
  const uint64_t cbs = cache.block_size();
  const uint64_t b = file_off / cbs;
  const auto in_block = static_cast<uint32_t>(file_off % cbs);
  bytes = std::min<uint64_t>(bytes, cbs - in_block);
  // The block's bytes in the file (the last one may be short): whole
  // sectors, or O_DIRECT could not read it.
  const uint64_t fill_off = b * cbs;
  const uint64_t file_size = level(lvl).file_size;
  const uint64_t fill_len = fill_off < file_size ? std::min<uint64_t>(cbs, file_size - fill_off) : 0;
  if (fill_len % kSector != 0 || in_block + bytes > fill_len) {
    ++vstats.cache_bypasses;
    return read_direct(r, lvl, file_off, bytes);
  }
  SubOp* s = new_sub(SubOp::Role::kCacheWait, lvl);
  if (s == nullptr) {
    park(r, resource_waiters_);
    return false;
  }
  if (!s->waiter) s->waiter.reset(new (std::nothrow) PieceWaiter(wake_.get(), *this, *s));
  auto res = cache.lookup(ci, b, static_cast<uint32_t>(bytes), s->waiter.get());
  count_lookup(res.outcome, bytes);
  switch (res.outcome) {
    case BlockCache::Outcome::kHit:
      free_sub(*s);
      if (res.block.length() < in_block + bytes) break;  // the file's tail shorter than when filled
      ++vstats.cache_hits;
      fill_guest(r, res.block.data() + in_block, bytes);
      return true;
    case BlockCache::Outcome::kFill:
    case BlockCache::Outcome::kWait: {
      const size_t got = take_iov(r, *s, bytes);
      s->req = &r;
      s->file_off = file_off;
      s->in_block = in_block;
      s->bytes = static_cast<uint32_t>(got);
      ++r.pending;
      r.pos += got;
      if (res.outcome == BlockCache::Outcome::kWait) {
        ++vstats.cache_waits;  // piece_ready() from this reactor once the fill is done
        return true;
      }
      ++vstats.cache_fills;
      s->role = SubOp::Role::kCacheFill;
      s->cblock = std::move(res.block);
      s->fill_len = static_cast<uint32_t>(fill_len);
      s->fill_iov = iovec{s->cblock.data(), fill_len};
      s->prep_read(&s->fill_iov, 1, fill_off);
      start(*s);
      return true;
    }
    case BlockCache::Outcome::kBypass:
      free_sub(*s);
      break;
  }
  ++vstats.cache_bypasses;
  return read_direct(r, lvl, file_off, bytes);
}

// The lookup's outcome as the cache counts it (block_cache.cc lookup()),
// for this channel's share of the counters.
void VhdChannel::count_lookup(BlockCache::Outcome outcome, uint64_t bytes) noexcept {
  switch (outcome) {
    case BlockCache::Outcome::kHit:
      cache_counts.hits.add();
      cache_counts.bytes_from_memory.add(bytes);
      break;
    case BlockCache::Outcome::kFill:
      cache_counts.misses.add();
      break;
    case BlockCache::Outcome::kWait:
      cache_counts.joins.add();
      break;
    case BlockCache::Outcome::kBypass:
      cache_counts.bypasses.add();
      break;
  }
}

// A cached piece's block is there (error 0, pinned) or will not be (the
// fill failed, here or on another worker): copy it, or read the piece
// around the cache as the contract says (another worker's failure is not
// this request's).
void VhdChannel::piece_ready(SubOp& s, CacheBlock block, int error) noexcept {
  Req& r = *s.req;
  if (error == 0 && block && block.length() >= s.in_block + s.bytes) {
    const uint8_t* src = block.data() + s.in_block;
    for (unsigned i = 0; i < s.nio; ++i) {
      std::memcpy(s.iov[i].iov_base, src, s.iov[i].iov_len);
      src += s.iov[i].iov_len;
    }
    block.reset();
    free_sub(s);
    sub_done(r, 0);
    return;
  }
  block.reset();
  ++vstats.cache_fallbacks;
  ++vstats.data_ops;
  s.role = SubOp::Role::kData;
  s.prep_read(s.iov, s.nio, s.file_off);
  start(s);
}

// ---------------------------------------------------------------------------
// The bitmap cache.

VhdChannel::Slot* VhdChannel::find_slot(uint64_t key) noexcept {
  const size_t mask = index_.size() - 1;
  for (size_t i = home(key);; i = (i + 1) & mask) {
    const int32_t v = index_[i];
    if (v < 0) return nullptr;
    if (slots_[static_cast<size_t>(v)].key == key) return &slots_[static_cast<size_t>(v)];
  }
}

VhdChannel::Slot* VhdChannel::take_slot(uint64_t key) noexcept {
  Slot* s = free_slots_;
  if (s != nullptr) {
    free_slots_ = s->lru_next;
  } else {
    s = lru_tail_;  // the least recently used idle slot
    if (s == nullptr) return nullptr;
    drop_slot(*s);
    free_slots_ = s->lru_next;
  }
  s->key = key;
  s->prev = s->lru_next = nullptr;
  const size_t mask = index_.size() - 1;
  size_t i = home(key);
  while (index_[i] >= 0) i = (i + 1) & mask;
  index_[i] = static_cast<int32_t>(s - slots_.data());
  return s;
}

// Unindexes an idle slot and puts it on the free list.
void VhdChannel::drop_slot(Slot& s) noexcept {
  lru_remove(s);
  const size_t mask = index_.size() - 1;
  size_t i = home(s.key);
  const auto me = static_cast<int32_t>(&s - slots_.data());
  while (index_[i] != me) i = (i + 1) & mask;
  // Backward-shift deletion keeps every probe chain unbroken.
  index_[i] = -1;
  for (size_t j = (i + 1) & mask; index_[j] >= 0; j = (j + 1) & mask) {
    const int32_t v = index_[j];
    const size_t h = home(slots_[static_cast<size_t>(v)].key);
    // Move v back to i when i lies cyclically in [home, j).
    if (((j - h) & mask) >= ((j - i) & mask)) {
      index_[i] = v;
      index_[j] = -1;
      i = j;
    }
  }
  s.key = kNoKey;
  s.lru_next = free_slots_;
  free_slots_ = &s;
}

void VhdChannel::lru_remove(Slot& s) noexcept {
  if (s.prev == nullptr && lru_head_ != &s) return;  // not on the LRU
  if (s.prev != nullptr) s.prev->lru_next = s.lru_next;
  if (s.lru_next != nullptr) {
    s.lru_next->prev = s.prev;
  } else {
    lru_tail_ = s.prev;
  }
  if (lru_head_ == &s) lru_head_ = s.lru_next;
  s.prev = s.lru_next = nullptr;
}

void VhdChannel::touch(Slot& s) noexcept {
  if (lru_head_ == &s || s.busy()) return;
  lru_remove(s);
  idle(s);
}

// An unpinned slot goes to the head of the LRU (evictable).
void VhdChannel::idle(Slot& s) noexcept {
  s.prev = nullptr;
  s.lru_next = lru_head_;
  if (lru_head_ != nullptr) lru_head_->prev = &s;
  lru_head_ = &s;
  if (lru_tail_ == nullptr) lru_tail_ = &s;
  resources_freed_ = true;
}

VhdChannel::Slot* VhdChannel::bitmap_for(Req& r, uint8_t lvl, uint32_t block) noexcept {
  const uint64_t key = (uint64_t{lvl} << 32) | block;
  Slot* s = find_slot(key);
  if (s != nullptr && !s->loading) {
    touch(*s);
    return s;
  }
  if (s == nullptr) {
    s = take_slot(key);
    if (s == nullptr) {
      park(r, resource_waiters_);  // every slot in use by I/O: wait for one
      return nullptr;
    }
    SubOp* load = new_sub(SubOp::Role::kLoad, lvl);
    if (load == nullptr) {
      drop_slot(*s);
      r.error = -ENOMEM;
      return nullptr;
    }
    const VhdLevel& l = level(lvl);
    s->loading = true;
    load->slot = s;
    load->iov[0] = iovec{s->bits.get(), l.layout.bitmap_bytes};
    load->prep_read(load->iov, 1, vhd::BlockLayout::bitmap_offset(l.bat[block]));
    ++vstats.bitmap_loads;
    start(*load);
  }
  park(r, s->waiters);
  return nullptr;
}

void VhdChannel::load_done(SubOp& load, int result) noexcept {
  Slot& s = *load.slot;
  const auto lvl = static_cast<size_t>(s.key >> 32);
  const auto block = static_cast<uint32_t>(s.key);
  free_sub(load);
  s.loading = false;
  Req* waiters = s.waiters;
  s.waiters = nullptr;
  if (result < 0) {
    drop_slot(s);
    for (Req* r = waiters; r != nullptr; r = r->next) {
      if (r->error == 0) r->error = result;
    }
  } else {
    const VhdLevel& l = level(lvl);
    if (vhd::bitmap_all_set(std::span<const uint8_t>(s.bits.get(), l.layout.bitmap_bytes), spb())) {
      image_.set_full(lvl, block, true);
    }
    idle(s);
  }
  // They re-plan now, while the bitmap is certainly cached.
  wake(waiters);
}

}  // namespace xenpath
