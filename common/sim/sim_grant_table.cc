#include "common/sim/sim_grant_table.h"

#include <sys/mman.h>

#include <cstring>

#include "common/sim/sim_domain.h"
#include "common/sim/sim_hypervisor.h"
#include "common/xen/ring_protocol.h"

namespace xenpath::sim {
namespace {

// The checks Xen's _set_status() makes on a grant entry, for grantee `self`.
int16_t check_entry(const SimDomainImpl::GrantEntry& e, DomId self, bool write) noexcept {
  if (!e.in_use || e.to != self) return GNTST_general_error;
  if (write && e.readonly) return GNTST_general_error;
  return GNTST_okay;
}

}  // namespace

SimGrantTable::~SimGrantTable() {
  // A closing gntdev handle unmaps what is left; so do we (and count it, so
  // a leak shows up in the tests' mapped_pages_live checks before this).
  while (!maps_.empty()) {
    auto it = maps_.begin();
    unmap(it->first, static_cast<uint32_t>(it->second.refs.size()));
  }
}

Result<GrantMapping> SimGrantTable::do_map(DomId dom_id, std::span<const GrantRef> refs, bool writable,
                                           std::span<int16_t> status) noexcept {
  auto& c = hv_.counters();
  c.map_calls.fetch_add(1, std::memory_order_relaxed);
  const bool want_status = status.size() == refs.size();
  auto fail_all = [&](int16_t st, int err) -> Result<GrantMapping> {
    if (want_status) std::fill(status.begin(), status.end(), st);
    c.map_failures.fetch_add(1, std::memory_order_relaxed);
    return unexpected(err);
  };
  if (refs.empty()) return fail_all(GNTST_general_error, EINVAL);
  if (mapped_ + refs.size() > max_grants_) return fail_all(GNTST_no_space, ENOSPC);
  auto dom = hv_.find_live(dom_id);
  if (!dom) return fail_all(GNTST_bad_domain, EINVAL);

  // Reserve the whole range first so the mapping is contiguous.
  const size_t bytes = refs.size() * kPageSize;
  void* base = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return fail_all(GNTST_no_device_space, ENOMEM);

  std::vector<uint32_t> pfns(refs.size());
  {
    std::lock_guard lock(dom->grant_lock());
    if (dom->dying()) {
      munmap(base, bytes);
      return fail_all(GNTST_bad_domain, EINVAL);
    }
    auto& entries = dom->entries();
    bool failed = false;
    for (size_t i = 0; i < refs.size(); ++i) {
      int16_t st = refs[i] >= entries.size() ? static_cast<int16_t>(GNTST_bad_gntref)
                                             : check_entry(entries[refs[i]], self_, writable);
      if (want_status) status[i] = st;
      if (st != GNTST_okay) {
        failed = true;
      } else {
        pfns[i] = entries[refs[i]].pfn;
      }
    }
    if (failed) {
      munmap(base, bytes);
      c.map_failures.fetch_add(1, std::memory_order_relaxed);
      return unexpected(EINVAL);
    }
    for (GrantRef r : refs) ++entries[r].maps;
  }

  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  for (size_t i = 0; i < refs.size(); ++i) {
    void* at = static_cast<std::byte*>(base) + i * kPageSize;
    void* p = mmap(at, kPageSize, prot, MAP_SHARED | MAP_FIXED, dom->memfd(),
                   static_cast<off_t>(pfns[i]) * static_cast<off_t>(kPageSize));
    if (p == MAP_FAILED) {
      const int err = errno;
      munmap(base, bytes);
      std::lock_guard lock(dom->grant_lock());
      for (GrantRef r : refs) --dom->entries()[r].maps;
      if (want_status) std::fill(status.begin(), status.end(), static_cast<int16_t>(GNTST_general_error));
      c.map_failures.fetch_add(1, std::memory_order_relaxed);
      return unexpected(err);
    }
  }
  maps_.emplace(base, Mapping{std::move(dom), std::vector<GrantRef>(refs.begin(), refs.end())});
  mapped_ += static_cast<uint32_t>(refs.size());
  c.map_pages.fetch_add(refs.size(), std::memory_order_relaxed);
  c.mapped_pages_live.fetch_add(refs.size(), std::memory_order_relaxed);
  return GrantMapping(this, base, static_cast<uint32_t>(refs.size()));
}

void SimGrantTable::unmap(void* addr, uint32_t pages) noexcept {
  auto it = maps_.find(addr);
  if (it == maps_.end()) return;
  munmap(addr, static_cast<size_t>(pages) * kPageSize);
  {
    auto& dom = it->second.dom;
    std::lock_guard lock(dom->grant_lock());
    for (GrantRef r : it->second.refs) --dom->entries()[r].maps;
  }
  const auto n = it->second.refs.size();
  mapped_ -= static_cast<uint32_t>(n);
  maps_.erase(it);
  auto& c = hv_.counters();
  c.unmap_calls.fetch_add(1, std::memory_order_relaxed);
  c.unmap_pages.fetch_add(n, std::memory_order_relaxed);
  c.mapped_pages_live.fetch_sub(n, std::memory_order_relaxed);
}

Status SimGrantTable::set_max_grants(uint32_t count) noexcept {
  if (count == 0) return unexpected(EINVAL);
  max_grants_ = count;
  return ok();
}

Result<uint32_t> SimGrantTable::copy(std::span<GrantCopySegment> segs) noexcept {
  auto& c = hv_.counters();
  c.copy_calls.fetch_add(1, std::memory_order_relaxed);
  // What gntdev rejects for the whole call before any hypercall.
  for (const auto& s : segs) {
    if ((s.flags & (kCopySourceGref | kCopyDestGref)) == 0) return unexpected(EINVAL);
    if ((s.flags & kCopySourceGref) && s.source.foreign.offset + s.len > kPageSize) return unexpected(EINVAL);
    if ((s.flags & kCopyDestGref) && s.dest.foreign.offset + s.len > kPageSize) return unexpected(EINVAL);
  }
  // Resolves one foreign side to a byte pointer in the granting domain's
  // memory, or a GNTST code. `hold` keeps that domain alive for the copy.
  auto resolve = [&](const GrantCopySegment::Ptr& p, bool write, std::shared_ptr<SimDomainImpl>& hold,
                     std::byte** out) -> int16_t {
    hold = hv_.find_live(p.foreign.domid);
    if (!hold) return GNTST_bad_domain;
    std::lock_guard lock(hold->grant_lock());
    if (hold->dying()) return GNTST_bad_domain;
    auto& entries = hold->entries();
    if (p.foreign.ref >= entries.size()) return GNTST_bad_gntref;
    const auto& e = entries[p.foreign.ref];
    if (int16_t st = check_entry(e, self_, write); st != GNTST_okay) return st;
    *out = hold->page(e.pfn) + p.foreign.offset;
    return GNTST_okay;
  };
  uint32_t okay = 0;
  for (auto& s : segs) {
    std::shared_ptr<SimDomainImpl> hold_src, hold_dst;
    std::byte* src = static_cast<std::byte*>(s.source.virt);
    std::byte* dst = static_cast<std::byte*>(s.dest.virt);
    int16_t st = GNTST_okay;
    if (s.flags & kCopySourceGref) st = resolve(s.source, false, hold_src, &src);
    if (st == GNTST_okay && (s.flags & kCopyDestGref)) st = resolve(s.dest, true, hold_dst, &dst);
    if (st == GNTST_okay) {
      std::memmove(dst, src, s.len);
      ++okay;
    } else {
      c.copy_failures.fetch_add(1, std::memory_order_relaxed);
    }
    s.status = st;
  }
  c.copy_segs.fetch_add(segs.size(), std::memory_order_relaxed);
  return okay;
}

}  // namespace xenpath::sim
