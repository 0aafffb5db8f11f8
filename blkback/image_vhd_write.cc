// VhdChannel's writes (leaf only): one run at a time (step_write: into an
// allocated block, with a bitmap store when it sets clear bits, or queued
// for allocation), the bitmap stores, the allocation rounds in their
// crash-safe order (footer, data, sync, bitmaps + BAT; image_vhd.h and
// docs/vhd.md), and discard of whole blocks. See image_vhd.h.
#include <algorithm>
#include <cstring>
#include <span>

#include "blkback/image_vhd_channel.h"

namespace xenpath {

using vhd_io::aligned_bytes;
using vhd_io::kFsBlock;
using vhd_io::kMaxPendingAllocs;
using vhd_io::kMaxRoundBlocks;
using vhd_io::kReserveBlocks;
using vhd_io::kSector;
using vhd_io::pool_take;

// One run of a write: sectors from r.pos inside one block of the leaf.
bool VhdChannel::step_write(Req& r) noexcept {
  VhdLevel& l = leaf();
  const uint64_t sector = r.pos / kSector;
  const auto block = static_cast<uint32_t>(sector / spb());
  const auto first = static_cast<uint32_t>(sector % spb());
  const uint32_t limit = static_cast<uint32_t>(std::min<uint64_t>(spb() - first, (r.end - r.pos) / kSector));
  uint64_t file_off = r.pos;
  SubOp::Role role = SubOp::Role::kData;
  Slot* slot = nullptr;
  Alloc* alloc = nullptr;
  if (l.sparse()) {
    if (Alloc* a = find_alloc(block)) {
      // Being allocated: wait for its round, then write into the block.
      park(r, a->waiters);
      return false;
    }
    if (block >= l.bat.size()) {
      r.error = -EIO;
      return false;
    }
    const uint32_t entry = l.bat[block];
    if (entry == vhd::kBatUnused) {
      if (live_allocs_ >= kMaxPendingAllocs) {
        park(r, resource_waiters_);
        return false;
      }
      role = SubOp::Role::kAllocData;
    } else {
      file_off = l.layout.sector_offset(entry, first);
      if (!full(0, block)) {
        slot = bitmap_for(r, 0, block);
        if (slot == nullptr) return false;
        const std::span<const uint8_t> map(slot->bits.get(), l.layout.bitmap_bytes);
        // Bits already set: the data is all this write changes.
        const bool set = vhd::bitmap_test(map, first) && vhd::bitmap_run(map, first, limit) == limit;
        if (!set) role = SubOp::Role::kMarked;
      }
    }
  }
  SubOp* s = new_sub(role, 0);
  if (s == nullptr) {
    park(r, resource_waiters_);
    return false;
  }
  if (role == SubOp::Role::kAllocData) {
    alloc = pool_take(allocs_, free_allocs_);
    if (alloc == nullptr) {
      free_sub(*s);
      r.error = -ENOMEM;
      return false;
    }
    *alloc = Alloc{};
    alloc->block = block;
    ++live_allocs_;
  }
  const size_t got = take_iov(r, *s, uint64_t{limit} * kSector);
  s->req = &r;
  s->first = first;
  s->count = static_cast<uint32_t>(got / kSector);
  ++r.pending;
  ++vstats.data_ops;
  r.pos += got;
  switch (role) {
    case SubOp::Role::kAllocData:
      // Written by the round, at the block's place in the file.
      alloc->subs = s;
      if (queued_tail_ != nullptr) {
        queued_tail_->next = alloc;
      } else {
        queued_ = alloc;
      }
      queued_tail_ = alloc;
      start_round();
      return true;
    case SubOp::Role::kMarked:
      s->slot = slot;
      ++slot->pins;
      lru_remove(*slot);
      break;
    default:
      break;
  }
  s->prep_write(s->iov, s->nio, file_off);
  start(*s);
  return true;
}

void VhdChannel::marked_done(SubOp& s, int result) noexcept {
  Slot& slot = *s.slot;
  if (result < 0) {
    Req& r = *s.req;
    --slot.pins;
    if (!slot.busy()) idle(slot);
    free_sub(s);
    return sub_done(r, result);
  }
  // The data is on the file: the bits may say so now (in memory first, so
  // reads find it), then on the file.
  const VhdLevel& l = leaf();
  const std::span<uint8_t> map(slot.bits.get(), l.layout.bitmap_bytes);
  vhd::bitmap_set(map, s.first, s.count);
  if (vhd::bitmap_all_set(map, spb())) image_.set_full(0, static_cast<uint32_t>(slot.key), true);
  s.next = slot.store_next;
  slot.store_next = &s;
  if (!slot.storing) start_store(slot);
}

void VhdChannel::start_store(Slot& slot) noexcept {
  const VhdLevel& l = leaf();
  if (!slot.store_buf) slot.store_buf = aligned_bytes(l.layout.bitmap_bytes);
  SubOp* st = slot.store_buf ? new_sub(SubOp::Role::kStore, 0) : nullptr;
  if (st == nullptr) {
    // No memory for the store: the writes waiting for it fail.
    SubOp* s = slot.store_next;
    slot.store_next = nullptr;
    while (s != nullptr) {
      SubOp* next = s->next;
      Req& r = *s->req;
      --slot.pins;
      free_sub(*s);
      sub_done(r, -ENOMEM);
      s = next;
    }
    if (!slot.busy()) idle(slot);
    return;
  }
  std::memcpy(slot.store_buf.get(), slot.bits.get(), l.layout.bitmap_bytes);
  slot.storing = true;
  slot.store_cur = slot.store_next;
  slot.store_next = nullptr;
  st->slot = &slot;
  if (sync_data_) {
    // A differencing leaf: the data durable before the bits that claim it
    // (as in an allocation round).
    st->role = SubOp::Role::kStoreSync;
    st->prep_flush();
    start(*st);
    return;
  }
  store_write(*st);
}

void VhdChannel::store_write(SubOp& st) noexcept {
  const VhdLevel& l = leaf();
  Slot& slot = *st.slot;
  st.role = SubOp::Role::kStore;
  st.iov[0] = iovec{slot.store_buf.get(), l.layout.bitmap_bytes};
  st.prep_write(st.iov, 1, vhd::BlockLayout::bitmap_offset(l.bat[static_cast<uint32_t>(slot.key)]));
  ++vstats.bitmap_stores;
  start(st);
}

void VhdChannel::store_done(SubOp& st, int result) noexcept {
  Slot& slot = *st.slot;
  free_sub(st);
  slot.storing = false;
  SubOp* s = slot.store_cur;
  slot.store_cur = nullptr;
  // Writes that set bits meanwhile get the next store before anyone is
  // answered (their answers may start more writes on this slot).
  if (slot.store_next != nullptr) start_store(slot);
  while (s != nullptr) {
    SubOp* next = s->next;
    Req& r = *s->req;
    --slot.pins;
    free_sub(*s);
    sub_done(r, result);
    s = next;
  }
  if (!slot.busy()) idle(slot);
}

// ---------------------------------------------------------------------------
// Allocation rounds.

VhdChannel::Alloc* VhdChannel::find_alloc(uint32_t block) noexcept {
  if (live_allocs_ == 0) return nullptr;
  for (const Round& rd : rounds_) {
    for (Alloc* a = rd.allocs; a != nullptr; a = a->next) {
      if (a->block == block) return a;
    }
  }
  for (Alloc* a = queued_; a != nullptr; a = a->next) {
    if (a->block == block) return a;
  }
  return nullptr;
}

void VhdChannel::start_round() noexcept {
  if (queued_ == nullptr) return;
  Round& rd = rounds_[next_round_];
  Round& other = rounds_[next_round_ ^ 1];
  // A free slot, and the round before (if any) past its footer: this
  // round's data may extend the file only once that footer ends it.
  if (rd.phase != Phase::kIdle || (other.phase != Phase::kIdle && other.phase < Phase::kData)) return;
  next_round_ ^= 1;
  if (committing_ == nullptr) committing_ = &rd;
  VhdLevel& l = leaf();
  // Take up to kMaxRoundBlocks queued blocks and place them one after the
  // other past the data (space a crashed or failed round left unreferenced
  // is reused after a reopen).
  uint64_t pos = std::max(alloc_pos_, l.end_of_data);
  rd.allocs = nullptr;
  Alloc* tail = nullptr;
  unsigned n = 0;
  int error = 0;
  while (queued_ != nullptr && n < kMaxRoundBlocks) {
    Alloc* a = queued_;
    queued_ = a->next;
    a->next = nullptr;
    if (tail != nullptr) {
      tail->next = a;
    } else {
      rd.allocs = a;
    }
    tail = a;
    // The data on a 4 KiB boundary, with a whole 4 KiB piece in front of
    // it for the bitmap (zeros, then the bitmap) that nothing else uses.
    const uint64_t data = (pos + meta_span_ + kFsBlock - 1) / kFsBlock * kFsBlock;
    const uint64_t at = data - l.layout.bitmap_bytes;
    if (at / kSector >= vhd::kBatUnused) error = -ENOSPC;  // beyond what a BAT entry can say
    a->entry = static_cast<uint32_t>(at / kSector);
    pos = data + l.layout.block_size;
    ++n;
  }
  if (queued_ == nullptr) queued_tail_ = nullptr;
  alloc_pos_ = pos;
  rd.end = pos;
  rd.footer = 0;
  rd.error = error;
  ++vstats.alloc_rounds;
  rd.phase = Phase::kFooter;
  if (error != 0) return round_end(rd, error);
  if (rd.end <= l.footer_offset) return round_next(rd);  // inside the space the footer already leaves
  // 1. The footer moves first, kReserveBlocks blocks past the new ones (a
  // sparse reserve, so most rounds need not move it; given back at close),
  // so the file always ends in a valid footer.
  rd.footer = rd.end + uint64_t{kReserveBlocks} * l.layout.block_bytes();
  rd.pending = 1;
  round_write(rd, footer_buf_.get(), vhd::kFooterSize, rd.footer);
  round_io_done(rd, 0);
}

void VhdChannel::round_io_done(Round& rd, int result) noexcept {
  if (result < 0 && rd.error == 0) rd.error = result;
  if (--rd.pending != 0) return;
  if (rd.error != 0 && rd.phase != Phase::kMeta) {
    // Nothing of it is referenced yet; it still commits (fails) in order.
    rd.phase = Phase::kWaitMeta;
    if (committing_ == &rd) round_end(rd, rd.error);
    return;
  }
  if (rd.error != 0) return round_end(rd, rd.error);
  round_next(rd);
}

void VhdChannel::round_sync(Round& rd, Phase next) noexcept {
  rd.phase = next;
  SubOp* f = new_sub(SubOp::Role::kRound, 0);
  if (f == nullptr) {
    rd.pending = 1;
    return round_io_done(rd, -ENOMEM);
  }
  f->round = &rd;
  f->prep_flush();
  rd.pending = 1;
  start(*f);
}

void VhdChannel::round_next(Round& rd) noexcept {
  VhdLevel& l = leaf();
  switch (rd.phase) {
    case Phase::kFooter:
      if (rd.footer > l.footer_offset) {
        // The footer moved: the file is longer. That is durable before any
        // BAT entry points into the new space (after a power cut a BAT
        // entry beyond the end of the file would make the image unusable).
        l.footer_offset = rd.footer;
        return round_sync(rd, Phase::kFooterSync);
      }
      [[fallthrough]];
    case Phase::kFooterSync: {
      // 2. The data.
      rd.phase = Phase::kData;
      rd.pending = 1;  // guard while starting
      for (Alloc* a = rd.allocs; a != nullptr; a = a->next) {
        for (SubOp* sub = a->subs; sub != nullptr; sub = sub->next) {
          sub->round = &rd;
          sub->prep_write(sub->iov, sub->nio, l.layout.sector_offset(a->entry, sub->first));
          ++rd.pending;
          start(*sub);
        }
      }
      round_io_done(rd, 0);
      // The next round may start its data now.
      return start_round();
    }
    case Phase::kData:
      // 3. A differencing leaf: the data is durable before a bitmap bit
      // can claim it (else a power cut could turn the parent's sectors
      // into zeros). A dynamic disk needs no wait: a lost data sector
      // reads as zeros, which is what it held before.
      if (sync_data_) return round_sync(rd, Phase::kSync);
      [[fallthrough]];
    case Phase::kSync:
      rd.phase = Phase::kWaitMeta;
      [[fallthrough]];
    case Phase::kWaitMeta:
      // 4. Its metadata once the rounds before it committed.
      if (committing_ == &rd) round_meta(rd);
      return;
    case Phase::kMeta:
      return round_end(rd, 0);
    case Phase::kIdle:
      return;
  }
}

// 4. The bitmaps and the BAT with the new entries, together: a lost bitmap
// reads as all clear (the block as it was), a lost BAT entry leaves the
// block unreferenced. The BAT: each touched 4 KiB piece of the table once,
// whole when it lies inside the table, else the touched 512-byte sector
// (the table's ends may share a piece with other metadata); adjacent
// pieces in one write.
void VhdChannel::round_meta(Round& rd) noexcept {
  const VhdLevel& l = leaf();
  rd.phase = Phase::kMeta;
  rd.pending = 1;
  unsigned k = 0;
  for (Alloc* a = rd.allocs; a != nullptr; a = a->next, ++k) {
    uint8_t* span = rd.bitmaps.get() + size_t{k} * meta_span_;
    std::memset(span, 0, meta_span_);
    const std::span<uint8_t> bm(span + meta_span_ - l.layout.bitmap_bytes, l.layout.bitmap_bytes);
    for (SubOp* sub = a->subs; sub != nullptr; sub = sub->next) vhd::bitmap_set(bm, sub->first, sub->count);
    round_write(rd, span, meta_span_, l.layout.data_offset(a->entry) - meta_span_);
  }
  const uint64_t table = l.header.table_offset;
  const uint64_t table_end = table + vhd::bat_bytes_padded(static_cast<uint32_t>(l.bat.size()));
  struct Piece {
    uint64_t lo, hi;
  };
  Piece pieces[kMaxRoundBlocks];
  unsigned n = 0;
  for (Alloc* a = rd.allocs; a != nullptr; a = a->next) {
    const uint64_t at = vhd::bat_entry_offset(table, a->block);
    uint64_t lo = at / kFsBlock * kFsBlock;
    uint64_t hi = lo + kFsBlock;
    if (lo < table || hi > table_end) {
      lo = at / kSector * kSector;
      hi = lo + kSector;
    }
    if (std::find_if(pieces, pieces + n, [lo](const Piece& p) { return p.lo == lo; }) == pieces + n) {
      pieces[n++] = Piece{lo, hi};
    }
  }
  // In file order, adjacent pieces as one write (random blocks of a large
  // disk touch about every other piece of the table: half the writes).
  std::sort(pieces, pieces + n, [](const Piece& a, const Piece& b) { return a.lo < b.lo; });
  uint8_t* buf = rd.bat.get();  // the pieces packed: at most kMaxRoundBlocks * 4 KiB
  for (unsigned i = 0; i < n;) {
    const uint64_t lo = pieces[i].lo;
    uint64_t hi = pieces[i].hi;
    while (++i < n && pieces[i].lo == hi) hi = pieces[i].hi;
    // The committed entries, then this round's new ones over them.
    for (uint64_t off = lo; off < hi; off += 4) {
      const uint64_t blk = (off - table) / 4;
      vhd::bat_entry_encode(blk < l.bat.size() ? l.bat[blk] : vhd::kBatUnused, buf + (off - lo));
    }
    for (Alloc* a = rd.allocs; a != nullptr; a = a->next) {
      const uint64_t at = vhd::bat_entry_offset(table, a->block);
      if (at >= lo && at < hi) vhd::bat_entry_encode(a->entry, buf + (at - lo));
    }
    round_write(rd, buf, hi - lo, lo);
    buf += hi - lo;
  }
  round_io_done(rd, 0);
}

// One metadata write of a round.
void VhdChannel::round_write(Round& rd, uint8_t* buf, size_t len, uint64_t offset) noexcept {
  SubOp* w = new_sub(SubOp::Role::kRound, 0);
  if (w == nullptr) {
    if (rd.error == 0) rd.error = -ENOMEM;
    return;
  }
  w->round = &rd;
  w->iov[0] = iovec{buf, len};
  w->prep_write(w->iov, 1, offset);
  ++rd.pending;
  start(*w);
}

void VhdChannel::round_end(Round& rd, int error) noexcept {
  VhdLevel& l = leaf();
  if (error == 0) {
    unsigned k = 0;
    for (Alloc* a = rd.allocs; a != nullptr; a = a->next, ++k) {
      l.bat[a->block] = a->entry;
      ++l.allocated_blocks;
      ++vstats.allocations;
      // The bitmap just written is the block's: cache it when a slot is free.
      const std::span<const uint8_t> bm(rd.bitmaps.get() + size_t{k} * meta_span_ + meta_span_ - l.layout.bitmap_bytes,
                                        l.layout.bitmap_bytes);
      if (vhd::bitmap_all_set(bm, spb())) {
        image_.set_full(0, a->block, true);
      } else if (Slot* s = take_slot(uint64_t{a->block})) {
        std::memcpy(s->bits.get(), bm.data(), bm.size());
        idle(*s);
      }
    }
    l.end_of_data = std::max(l.end_of_data, rd.end);
  } else {
    ++vstats.alloc_failures;
  }
  rd.phase = Phase::kIdle;
  Alloc* a = rd.allocs;
  rd.allocs = nullptr;
  // The other round (if any) commits next.
  Round& other = rounds_[&rd == &rounds_[0] ? 1 : 0];
  committing_ = other.phase != Phase::kIdle ? &other : nullptr;
  // Answer the writes, then let the requests that waited for the blocks go
  // (a failed round leaves them unallocated: they try again).
  while (a != nullptr) {
    Alloc* next = a->next;
    SubOp* s = a->subs;
    while (s != nullptr) {
      SubOp* sn = s->next;
      Req& r = *s->req;
      free_sub(*s);
      sub_done(r, error);
      s = sn;
    }
    Req* waiters = a->waiters;
    a->next = free_allocs_;
    free_allocs_ = a;
    --live_allocs_;
    resources_freed_ = true;
    wake(waiters);
    a = next;
  }
  if (committing_ != nullptr && committing_->phase == Phase::kWaitMeta) {
    if (committing_->error != 0) {
      round_end(*committing_, committing_->error);
    } else {
      round_meta(*committing_);
    }
  }
  start_round();
}

// ---------------------------------------------------------------------------
// Discard.

void VhdChannel::run_discard() noexcept {
  ImageOp& op = *discard_;
  const VhdLevel& l = leaf();
  const uint64_t bs = block_size_;
  const uint64_t first = (op.offset() + bs - 1) / bs;
  const uint64_t end = std::min<uint64_t>((op.offset() + op.remaining()) / bs, l.bat.size());
  discard_error_ = 0;
  discard_pending_ = 1;
  punched_.clear();
  for (uint64_t b = first; b < end; ++b) {
    const uint32_t entry = l.bat[b];
    if (entry == vhd::kBatUnused) continue;
    SubOp* s = new_sub(SubOp::Role::kPunch, 0);
    if (s == nullptr) {
      discard_error_ = -ENOMEM;
      break;
    }
    try {
      punched_.push_back(static_cast<uint32_t>(b));
    } catch (...) {
      free_sub(*s);
      discard_error_ = -ENOMEM;
      break;
    }
    s->prep_discard(vhd::BlockLayout::bitmap_offset(entry), l.layout.block_bytes(), false);
    ++discard_pending_;
    start(*s);
  }
  if (--discard_pending_ == 0) discard_done();
}

void VhdChannel::discard_done() noexcept {
  // Whatever was punched reads as never written: forget what we knew.
  for (uint32_t b : punched_) {
    image_.set_full(0, b, false);
    if (Slot* s = find_slot(uint64_t{b})) drop_slot(*s);
    ++vstats.punched_blocks;
  }
  punched_.clear();
  ImageOp& op = *discard_;
  discard_ = nullptr;
  complete_later(op, discard_error_);  // may run inside submit()
  // Release what was held behind it, in order (another discard stops it).
  OpFifo held = held_;
  held_ = {};
  while (ImageOp* h = held.pop()) {
    --stats_.submitted;  // counted again by submit()
    --stats_.in_flight;
    submit(*h);
    if (discard_ != nullptr) {
      while (ImageOp* rest = held.pop()) held_.push(*rest);
      break;
    }
  }
}

}  // namespace xenpath
