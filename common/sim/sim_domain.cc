#include "common/sim/sim_domain.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

namespace xenpath::sim {

Result<std::shared_ptr<SimDomainImpl>> SimDomainImpl::create(DomId id, uint32_t pages, std::string name,
                                                             uint32_t grant_entries) noexcept {
  std::shared_ptr<SimDomainImpl> d(new SimDomainImpl(id, pages, std::move(name)));
  const std::string fdname = "xenpath-sim-dom" + std::to_string(id);
  d->memfd_ = memfd_create(fdname.c_str(), MFD_CLOEXEC);
  if (d->memfd_ < 0) return unexpected_errno();
  const size_t bytes = static_cast<size_t>(pages) * kPageSize;
  if (bytes > 0) {
    // Sparse: only pages the guest touches use memory.
    if (ftruncate(d->memfd_, static_cast<off_t>(bytes)) != 0) return unexpected_errno();
    void* v = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, d->memfd_, 0);
    if (v == MAP_FAILED) return unexpected_errno();
    d->view_ = static_cast<std::byte*>(v);
  }
  d->entries_.resize(grant_entries);
  d->free_refs_.reserve(grant_entries);
  // Refs 0-7 are reserved on Xen (GNTTAB_NR_RESERVED_ENTRIES: the toolstack's
  // xenstore/console grants); hand out from 8 up, lowest first.
  for (uint32_t r = grant_entries; r > 8; --r) d->free_refs_.push_back(r - 1);
  d->page_used_.assign(pages, false);
  return d;
}

SimDomainImpl::~SimDomainImpl() {
  if (view_ != nullptr) munmap(view_, static_cast<size_t>(pages_) * kPageSize);
  if (memfd_ >= 0) close(memfd_);
}

std::byte* SimDomainImpl::page(uint32_t pfn) const noexcept {
  if (pfn >= pages_) return nullptr;
  return view_ + static_cast<size_t>(pfn) * kPageSize;
}

Result<uint32_t> SimDomainImpl::alloc_pages(uint32_t count) noexcept {
  if (count == 0) return unexpected(EINVAL);
  std::lock_guard lock(mu_);
  // First fit from a rotating hint: guests allocate rings and buffers in
  // small numbers, fragmentation is not a concern of the simulation.
  for (uint32_t pass = 0; pass < 2; ++pass) {
    const uint32_t start = pass == 0 ? alloc_hint_ : 0;
    uint32_t run = 0;
    for (uint32_t p = start; p < pages_; ++p) {
      run = page_used_[p] ? 0 : run + 1;
      if (run == count) {
        const uint32_t first = p + 1 - count;
        for (uint32_t q = first; q <= p; ++q) page_used_[q] = true;
        alloc_hint_ = p + 1;
        std::memset(view_ + static_cast<size_t>(first) * kPageSize, 0, static_cast<size_t>(count) * kPageSize);
        return first;
      }
    }
  }
  return unexpected(ENOMEM);
}

void SimDomainImpl::free_pages(uint32_t pfn, uint32_t count) noexcept {
  std::lock_guard lock(mu_);
  for (uint32_t p = pfn; p < pfn + count && p < pages_; ++p) page_used_[p] = false;
}

Result<GrantRef> SimDomainImpl::grant_access(DomId to, uint32_t pfn, bool readonly) noexcept {
  if (pfn >= pages_) return unexpected(EINVAL);
  std::lock_guard lock(mu_);
  if (dying_) return unexpected(ESRCH);
  if (free_refs_.empty()) return unexpected(ENOSPC);
  const GrantRef ref = free_refs_.back();
  free_refs_.pop_back();
  entries_[ref] = GrantEntry{true, readonly, to, pfn, 0};
  return ref;
}

Status SimDomainImpl::end_access(GrantRef ref) noexcept {
  std::lock_guard lock(mu_);
  if (ref >= entries_.size() || !entries_[ref].in_use) return unexpected(EINVAL);
  // Xen refuses to revoke a grant the grantee still has mapped
  // (GTF_reading/GTF_writing set); the frontend must retry later.
  if (entries_[ref].maps > 0) return unexpected(EBUSY);
  entries_[ref] = GrantEntry{};
  free_refs_.push_back(ref);
  return ok();
}

uint32_t SimDomainImpl::active_maps(GrantRef ref) const noexcept {
  std::lock_guard lock(mu_);
  return ref < entries_.size() ? entries_[ref].maps : 0;
}

uint32_t SimDomainImpl::grants_in_use() const noexcept {
  std::lock_guard lock(mu_);
  return static_cast<uint32_t>(entries_.size() - 8 - free_refs_.size());
}

void SimDomainImpl::mark_dying() noexcept {
  std::lock_guard lock(mu_);
  dying_ = true;
}

}  // namespace xenpath::sim
