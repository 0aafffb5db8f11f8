#include "sim/sim_grant_table.h"

#include "common/xen/ring_protocol.h"  // <xen/grant_table.h>: GNTST_*

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>
#include <new>

#include <spdlog/spdlog.h>

#include "sim/sim_domain.h"
#include "sim/sim_hypervisor.h"

namespace xenpath::sim {

namespace {

// Per-ref statuses for callers that pass none, without allocating for
// batches of ordinary size (a blkif request has at most 11 segments, an
// indirect one a few hundred).
constexpr size_t kStackStatus = 512;

}  // namespace

SimGrantTable::~SimGrantTable() {
  for (auto& [addr, m] : maps_) {
    spdlog::error("sim grant table d{}: mapping {} of {} pages outlived its handle; unmapping", self_, addr,
                  m.refs.size());
    release(addr, m);
  }
}

Status SimGrantTable::set_max_grants(uint32_t count) noexcept {
  max_grants_ = count;
  return ok();
}

Result<GrantMapping> SimGrantTable::do_map(DomId dom, std::span<const GrantRef> refs, bool writable,
                                           std::span<int16_t> status) noexcept {
  SimCounters& c = hv_.counters();
  c.map_calls.fetch_add(1, std::memory_order_relaxed);
  auto fail = [&c](int err) -> Result<GrantMapping> {
    c.map_failures.fetch_add(1, std::memory_order_relaxed);
    return unexpected(err);
  };
  if (refs.empty() || refs.size() > kMaxRefsPerMap) return fail(EINVAL);
  if (!status.empty() && status.size() != refs.size()) return fail(EINVAL);
  const auto n = static_cast<uint32_t>(refs.size());

  std::array<int16_t, kStackStatus> stack_status;
  std::vector<int16_t> heap_status;
  std::span<int16_t> st = status;
  if (st.empty()) {
    if (n <= kStackStatus) {
      st = std::span<int16_t>(stack_status.data(), n);
    } else {
      try {
        heap_status.resize(n);
      } catch (const std::bad_alloc&) {
        return fail(ENOMEM);
      }
      st = heap_status;
    }
  }

  if (live_pages_ >= max_grants_ || n > max_grants_ - live_pages_) {
    std::fill(st.begin(), st.end(), static_cast<int16_t>(GNTST_no_device_space));
    return fail(ENOSPC);
  }
  GuestDomain* d = hv_.live_domain(dom);
  if (d == nullptr) {
    std::fill(st.begin(), st.end(), static_cast<int16_t>(GNTST_bad_domain));
    return fail(EINVAL);
  }

  std::vector<GrantRef> kept;
  try {
    kept.assign(refs.begin(), refs.end());
  } catch (const std::bad_alloc&) {
    return fail(ENOMEM);
  }
  // One reservation for the batch, so the pages are contiguous whatever
  // guest frames they come from; MAP_FIXED then replaces it page run by
  // page run.
  const size_t bytes = static_cast<size_t>(n) * kPageSize;
  void* region = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) return fail(errno != 0 ? errno : ENOMEM);
  if (const int err = d->map_grants(self_, refs, writable, static_cast<std::byte*>(region), st); err != 0) {
    munmap(region, bytes);
    return fail(err);
  }
  try {
    maps_.emplace(region, Mapping{d, std::move(kept), writable});
  } catch (const std::bad_alloc&) {
    munmap(region, bytes);
    d->unpin_grants(refs, writable);
    return fail(ENOMEM);
  }
  live_pages_ += n;
  c.map_pages.fetch_add(n, std::memory_order_relaxed);
  c.mapped_pages_live.fetch_add(n, std::memory_order_relaxed);
  return GrantMapping(this, region, n);
}

void SimGrantTable::release(void* addr, Mapping& m) noexcept {
  const auto n = static_cast<uint32_t>(m.refs.size());
  munmap(addr, static_cast<size_t>(n) * kPageSize);
  m.dom->unpin_grants(m.refs, m.writable);
  live_pages_ -= n;
  SimCounters& c = hv_.counters();
  c.unmap_calls.fetch_add(1, std::memory_order_relaxed);
  c.unmap_pages.fetch_add(n, std::memory_order_relaxed);
  c.mapped_pages_live.fetch_sub(n, std::memory_order_relaxed);
}

void SimGrantTable::unmap(void* addr, uint32_t pages) noexcept {
  auto it = maps_.find(addr);
  if (it == maps_.end() || it->second.refs.size() != pages) {
    // xengnttab_unmap() fails with EINVAL for a range it did not map.
    spdlog::error("sim grant table d{}: unmap of {} ({} pages) that this handle did not map", self_, addr, pages);
    return;
  }
  release(addr, it->second);
  maps_.erase(it);
}

Result<uint32_t> SimGrantTable::copy(std::span<GrantCopySegment> segs) noexcept {
  SimCounters& c = hv_.counters();
  c.copy_calls.fetch_add(1, std::memory_order_relaxed);
  if (!copy_batch_acceptable(segs)) return unexpected(EINVAL);
  c.copy_segs.fetch_add(segs.size(), std::memory_order_relaxed);
  uint32_t done = 0;
  uint64_t failed = 0;
  for (GrantCopySegment& s : segs) {
    s.status = copy_one(s);
    if (s.status == GNTST_okay) {
      ++done;
    } else {
      ++failed;
    }
  }
  if (failed != 0) c.copy_failures.fetch_add(failed, std::memory_order_relaxed);
  return done;
}

int16_t SimGrantTable::copy_one(GrantCopySegment& seg) noexcept {
  if (seg.len == 0) return GNTST_okay;
  const bool src_gref = (seg.flags & kCopySourceGref) != 0;
  const bool dst_gref = (seg.flags & kCopyDestGref) != 0;
  GuestDomain* sd = nullptr;
  GuestDomain* dd = nullptr;
  if (src_gref && (sd = hv_.live_domain(seg.source.foreign.domid)) == nullptr) return GNTST_bad_domain;
  if (dst_gref && (dd = hv_.live_domain(seg.dest.foreign.domid)) == nullptr) return GNTST_bad_domain;

  // The copy runs under the granting domains' locks: nothing can revoke the
  // grant or tear the memory down half way, which is what Xen's pin does.
  std::unique_lock<std::mutex> l1;
  std::unique_lock<std::mutex> l2;
  if (sd != nullptr && dd != nullptr && sd != dd) {
    std::lock(sd->mutex(), dd->mutex());
    l1 = std::unique_lock(sd->mutex(), std::adopt_lock);
    l2 = std::unique_lock(dd->mutex(), std::adopt_lock);
  } else if (sd != nullptr || dd != nullptr) {
    l1 = std::unique_lock((sd != nullptr ? sd : dd)->mutex());
  }

  const std::byte* src = static_cast<const std::byte*>(seg.source.virt);
  std::byte* dst = static_cast<std::byte*>(seg.dest.virt);
  std::byte* frame = nullptr;
  if (sd != nullptr) {
    const int16_t st = sd->frame_for_copy_locked(seg.source.foreign.ref, self_, false, &frame);
    if (st != GNTST_okay) return st;
    src = frame + seg.source.foreign.offset;
  }
  if (dd != nullptr) {
    const int16_t st = dd->frame_for_copy_locked(seg.dest.foreign.ref, self_, true, &frame);
    if (st != GNTST_okay) return st;
    dst = frame + seg.dest.foreign.offset;
  }
  // memmove: source and dest may be the same guest page.
  std::memmove(dst, src, seg.len);
  return GNTST_okay;
}

}  // namespace xenpath::sim
