#include "common/libxen/libxen_gnttab.h"

// Sets the Xen interface version before any <xen/...> header comes in.
#include "common/xen/ring_protocol.h"

#include <sys/mman.h>
// The libxen tool headers have no extern "C" of their own.
extern "C" {
#include <xengnttab.h>
#include <xentoollog.h>
}

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <new>

#include <spdlog/spdlog.h>

namespace xenpath {

// GrantCopySegment is handed to the kernel as xengnttab_grant_copy_segment_t.
using XenSeg = xengnttab_grant_copy_segment_t;
static_assert(sizeof(GrantCopySegment) == sizeof(XenSeg));
static_assert(alignof(GrantCopySegment) == alignof(XenSeg));
static_assert(offsetof(GrantCopySegment, source.virt) == offsetof(XenSeg, source.virt));
static_assert(offsetof(GrantCopySegment, source.foreign.ref) == offsetof(XenSeg, source.foreign.ref));
static_assert(offsetof(GrantCopySegment, source.foreign.offset) == offsetof(XenSeg, source.foreign.offset));
static_assert(offsetof(GrantCopySegment, source.foreign.domid) == offsetof(XenSeg, source.foreign.domid));
static_assert(offsetof(GrantCopySegment, dest.virt) == offsetof(XenSeg, dest.virt));
static_assert(offsetof(GrantCopySegment, dest.foreign.ref) == offsetof(XenSeg, dest.foreign.ref));
static_assert(offsetof(GrantCopySegment, dest.foreign.offset) == offsetof(XenSeg, dest.foreign.offset));
static_assert(offsetof(GrantCopySegment, dest.foreign.domid) == offsetof(XenSeg, dest.foreign.domid));
static_assert(offsetof(GrantCopySegment, len) == offsetof(XenSeg, len));
static_assert(offsetof(GrantCopySegment, flags) == offsetof(XenSeg, flags));
static_assert(offsetof(GrantCopySegment, status) == offsetof(XenSeg, status));
static_assert(kCopySourceGref == GNTCOPY_source_gref);
static_assert(kCopyDestGref == GNTCOPY_dest_gref);

Result<std::unique_ptr<GrantTable>> LibxenGrantTable::open() noexcept {
  XP_ASSIGN_OR_RETURN(auto log, LibxenLog::make("gnttab: "));
  errno = 0;
  xengnttab_handle* h = xengnttab_open(static_cast<xentoollog_logger*>(log->xtl()), 0);
  if (h == nullptr) return unexpected_errno();
  auto* gt = new (std::nothrow) LibxenGrantTable(h, std::move(log));
  if (gt == nullptr) {
    xengnttab_close(h);
    return unexpected(ENOMEM);
  }
  return std::unique_ptr<GrantTable>(gt);
}

LibxenGrantTable::~LibxenGrantTable() {
  if (live_pages_ != 0) {
    // Closing gntdev leaves the VMAs in place; they go with their munmap.
    spdlog::error("grant table: closing with {} pages still mapped", live_pages_);
  }
  xengnttab_close(h_);
}

Status LibxenGrantTable::set_max_grants(uint32_t count) noexcept {
  errno = 0;
  if (xengnttab_set_max_grants(h_, count) != 0) return unexpected_errno();
  max_grants_ = count;
  return ok();
}

Result<GrantMapping> LibxenGrantTable::do_map(DomId dom, std::span<const GrantRef> refs, bool writable,
                                              std::span<int16_t> status) noexcept {
  if (refs.empty()) return unexpected(EINVAL);
  if (!status.empty() && status.size() != refs.size()) return unexpected(EINVAL);
  if (refs.size() > max_grants_ - std::min(live_pages_, max_grants_)) return unexpected(ENOSPC);
  const auto n = static_cast<uint32_t>(refs.size());
  errno = 0;
  // libxengnttab takes a non-const array but only reads it.
  void* addr = xengnttab_map_domain_grant_refs(h_, n, dom, const_cast<uint32_t*>(refs.data()),
                                               writable ? PROT_READ | PROT_WRITE : PROT_READ);
  if (addr == nullptr) return unexpected_errno();
  std::fill(status.begin(), status.end(), static_cast<int16_t>(GNTST_okay));
  live_pages_ += n;
  return GrantMapping(this, addr, n);
}

void LibxenGrantTable::unmap(void* addr, uint32_t pages) noexcept {
  errno = 0;
  if (xengnttab_unmap(h_, addr, pages) != 0) {
    // The grant stays pinned in Xen and the guest cannot revoke it: worth
    // an operator's attention, but nothing the datapath can do about it.
    spdlog::error("grant table: unmap of {} pages at {} failed: {}", pages, addr, error_string(errno));
    return;
  }
  live_pages_ -= std::min(live_pages_, pages);
}

Result<uint32_t> LibxenGrantTable::copy(std::span<GrantCopySegment> segs) noexcept {
  if (!copy_batch_acceptable(segs)) return unexpected(EINVAL);
  if (segs.empty()) return 0u;
  errno = 0;
  if (xengnttab_grant_copy(h_, static_cast<uint32_t>(segs.size()), reinterpret_cast<XenSeg*>(segs.data())) != 0) {
    return unexpected_errno();
  }
  return static_cast<uint32_t>(
      std::count_if(segs.begin(), segs.end(), [](const GrantCopySegment& s) { return s.status == GNTST_okay; }));
}

}  // namespace xenpath
