// VbdQueue, its second half: mapping the guest's data pages of admitted
// requests (indirect descriptors first, then the data: batched transient
// maps or the persistent-grant table), as blkif.h's grant rules say.
// The first half, blk_queue.cc, takes requests off the ring, starts their
// I/O and answers them. Worker thread only.
#include <algorithm>
#include <cstring>

#include "blkback/blk_queue.h"
#include "blkback/blk_queue_slot.h"

namespace xenpath {

void VbdQueue::admit_indirect(Slot** batch, unsigned n) noexcept {
  DispatchScratch& sc = scratch();
  GrantTable& gt = worker_.grant_table();
  size_t total = 0;
  bool any = false;
  for (unsigned i = 0; i < n; ++i) {
    Slot* s = batch[i];
    if (s == nullptr || !s->req.indirect) continue;
    if (!grow_slot(*s)) {
      // No room for its segments: answered as a request whose descriptor
      // pages cannot be mapped (the same resource shortage to the guest).
      log_.error("no memory for an indirect request's segments");
      finish(*s, BLKIF_RSP_ERROR, BlkReason::kIndirectMapFailed);
      batch[i] = nullptr;
      continue;
    }
    any = true;
    for (GrantRef g : blk_descriptor_grefs(s->req, config_.limits)) sc.refs[total++] = g;
  }
  if (!any) return;
  // All the burst's descriptor pages in one call: read-only, or through the
  // persistent table (a persistent frontend takes them from its pool too).
  GrantMapping batch_map;
  bool mapped = false;
  if (total == 0) {
    // Every indirect request is refused on its header: nothing to map.
  } else if (pgrants_) {
    const uint64_t before = pgrants_->stats().map_calls.get();
    mapped = pgrants_
                 ->acquire(std::span(sc.refs.data(), total), std::span(sc.pages.data(), total),
                           std::span(sc.handles.data(), total), &batch_map)
                 .has_value();
    stats_.map_calls.add(pgrants_->stats().map_calls.get() - before);
  } else {
    stats_.map_calls.add();
    auto m = gt.map(config_.frontend, std::span(sc.refs.data(), total), /*writable=*/false);
    if (m) {
      batch_map = std::move(*m);
      for (size_t k = 0; k < total; ++k) sc.pages[k] = batch_map.page(static_cast<uint32_t>(k));
      mapped = true;
    }
  }
  if (total != 0 && !mapped) stats_.map_fallbacks.add();
  size_t at = 0;
  for (unsigned i = 0; i < n; ++i) {
    Slot* s = batch[i];
    if (s == nullptr || !s->req.indirect) continue;
    const size_t np = blk_descriptor_grefs(s->req, config_.limits).size();
    const std::byte* pages[kBlkMaxIndirectPages];
    size_t have = np;  // admission answers a request without its pages (0) as unmappable
    GrantMapping single;
    if (np == 0) {
      // Refused on its header: admission says why.
    } else if (mapped) {
      for (size_t p = 0; p < np; ++p) pages[p] = sc.pages[at + p];
    } else {
      // The batch failed: map this request's pages alone so only a request
      // with a bad descriptor gref fails.
      stats_.map_calls.add();
      auto one = gt.map(config_.frontend, std::span(sc.refs.data() + at, np), false);
      if (one) {
        single = std::move(*one);
        for (size_t p = 0; p < np; ++p) pages[p] = single.page(static_cast<uint32_t>(p));
      } else {
        have = 0;
      }
    }
    at += np;
    if (!admit(*s, std::span<const std::byte* const>(pages, have))) batch[i] = nullptr;
  }
  // Only the copies remain: transient descriptor mappings go now (RAII),
  // persistent ones become idle.
  if (pgrants_ && mapped) pgrants_->release(std::span(sc.handles.data(), total), worker_.reactor().now());
}

void VbdQueue::map_data(Slot** batch, unsigned n) noexcept {
  if (pgrants_) {
    map_data_persistent(batch, n);
    return;
  }
  map_data_transient(batch, n, /*writable=*/true);
  map_data_transient(batch, n, /*writable=*/false);
}

uint32_t VbdQueue::take_burst(GrantMapping&& m, uint32_t users) noexcept {
  const uint32_t b = free_burst_;  // never exhausted: each burst holds >= 1 slot in use
  free_burst_ = bursts_[b].next_free;
  bursts_[b].mapping = std::move(m);
  bursts_[b].pending = users;
  bursts_[b].done = nullptr;
  bursts_[b].next_free = kNoBurst;
  return b;
}

void VbdQueue::put_burst(uint32_t b) noexcept {
  BurstMap& bm = bursts_[b];
  if (--bm.pending != 0) return;
  bm.mapping.reset();  // the whole burst's grants unmapped in one call...
  Slot* s = bm.done;   // ...then its requests are answered
  bm.done = nullptr;
  bm.next_free = free_burst_;
  free_burst_ = b;
  while (s != nullptr) {
    Slot* next = s->next;
    respond(*s);
    s = next;
  }
}

void VbdQueue::map_data_transient(Slot** batch, unsigned n, bool writable) noexcept {
  DispatchScratch& sc = scratch();
  size_t total = 0;
  uint32_t users = 0;
  for (unsigned i = 0; i < n; ++i) {
    Slot* s = batch[i];
    if (s == nullptr || s->a.segs.empty() || s->a.writes_guest() != writable) continue;
    for (const BlkSegment& seg : s->a.segs) sc.refs[total++] = seg.gref;
    ++users;
  }
  if (total == 0) return;
  stats_.map_calls.add();
  auto m = worker_.grant_table().map(config_.frontend, std::span(sc.refs.data(), total), writable);
  if (m) {
    const uint32_t b = take_burst(std::move(*m), users);
    uint32_t at = 0;
    for (unsigned i = 0; i < n; ++i) {
      Slot* s = batch[i];
      if (s == nullptr || s->a.segs.empty() || s->a.writes_guest() != writable) continue;
      s->burst = b;
      for (size_t k = 0; k < s->a.segs.size(); ++k) s->pages[k] = bursts_[b].mapping.page(at++);
    }
    return;
  }
  stats_.map_fallbacks.add();
  for (unsigned i = 0; i < n; ++i) {
    Slot* s = batch[i];
    if (s == nullptr || s->a.segs.empty() || s->a.writes_guest() != writable) continue;
    if (!map_one(*s, writable)) {
      reject(*s, BlkVerdict{BLKIF_RSP_ERROR, BlkReason::kMapFailed});
      batch[i] = nullptr;
    }
  }
}

bool VbdQueue::map_one(Slot& s, bool writable) noexcept {
  DispatchScratch& sc = scratch();
  const size_t nseg = s.a.segs.size();
  for (size_t k = 0; k < nseg; ++k) sc.refs[k] = s.a.segs[k].gref;
  stats_.map_calls.add();
  auto m = worker_.grant_table().map(config_.frontend, std::span(sc.refs.data(), nseg), writable);
  if (!m) {
    log_.guest("request {}: cannot map its {} grants: {}", s.req.id, nseg, error_string(m.error()));
    return false;
  }
  s.own = std::move(*m);
  for (size_t k = 0; k < nseg; ++k) s.pages[k] = s.own.page(static_cast<uint32_t>(k));
  return true;
}

void VbdQueue::map_data_persistent(Slot** batch, unsigned n) noexcept {
  DispatchScratch& sc = scratch();
  size_t total = 0;
  uint32_t users = 0;
  for (unsigned i = 0; i < n; ++i) {
    Slot* s = batch[i];
    if (s == nullptr || s->a.segs.empty()) continue;
    for (const BlkSegment& seg : s->a.segs) sc.refs[total++] = seg.gref;
    ++users;
  }
  if (total == 0) return;
  GrantMapping transient;
  const uint64_t calls_before = pgrants_->stats().map_calls.get();
  Status st = pgrants_->acquire(std::span(sc.refs.data(), total), std::span(sc.pages.data(), total),
                                std::span(sc.handles.data(), total), &transient);
  stats_.map_calls.add(pgrants_->stats().map_calls.get() - calls_before);
  if (st) {
    const uint32_t b = transient ? take_burst(std::move(transient), users) : kNoBurst;
    size_t at = 0;
    for (unsigned i = 0; i < n; ++i) {
      Slot* s = batch[i];
      if (s == nullptr || s->a.segs.empty()) continue;
      s->burst = b;
      s->nhandles = static_cast<unsigned>(s->a.segs.size());
      for (size_t k = 0; k < s->a.segs.size(); ++k, ++at) {
        s->pages[k] = sc.pages[at];
        s->handles[k] = sc.handles[at];
      }
    }
    return;
  }
  stats_.map_fallbacks.add();
  for (unsigned i = 0; i < n; ++i) {
    Slot* s = batch[i];
    if (s == nullptr || s->a.segs.empty()) continue;
    const size_t nseg = s->a.segs.size();
    for (size_t k = 0; k < nseg; ++k) sc.refs[k] = s->a.segs[k].gref;
    GrantMapping own;
    const uint64_t before = pgrants_->stats().map_calls.get();
    Status one = pgrants_->acquire(std::span(sc.refs.data(), nseg), std::span(s->pages.data(), nseg),
                                   std::span(s->handles.data(), nseg), &own);
    stats_.map_calls.add(pgrants_->stats().map_calls.get() - before);
    if (!one) {
      log_.guest("request {}: cannot map its {} grants: {}", s->req.id, nseg, error_string(one.error()));
      reject(*s, BlkVerdict{BLKIF_RSP_ERROR, BlkReason::kMapFailed});
      batch[i] = nullptr;
      continue;
    }
    s->nhandles = static_cast<unsigned>(nseg);
    s->own = std::move(own);
  }
}

}  // namespace xenpath
