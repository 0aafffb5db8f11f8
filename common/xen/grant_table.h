// GrantTable: map and copy pages a guest granted to us, in batches.
//
// Two implementations: LibxenGrantTable (common/libxen/, over libxengnttab
// and /dev/xen/gntdev) and SimGrantTable (common/sim/, over the simulated
// host's guest memory). A handle is owned by one thread (a reactor); it is
// not safe to use one handle from two threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "common/result.h"
#include "common/stats.h"
#include "common/xen/types.h"

namespace xenpath {

class GrantTable;

// One contiguous mapping of a batch of grants; unmaps itself when destroyed.
// Move-only. Touches guest-shared memory: every byte behind data() may be
// rewritten by the guest at any moment, so callers copy before validating.
class GrantMapping {
 public:
  GrantMapping() noexcept = default;
  GrantMapping(GrantTable* owner, void* addr, uint32_t pages) noexcept : owner_(owner), addr_(addr), pages_(pages) {}
  GrantMapping(GrantMapping&& o) noexcept
      : owner_(std::exchange(o.owner_, nullptr)),
        addr_(std::exchange(o.addr_, nullptr)),
        pages_(std::exchange(o.pages_, 0)) {}
  GrantMapping& operator=(GrantMapping&& o) noexcept {
    if (this != &o) {
      reset();
      owner_ = std::exchange(o.owner_, nullptr);
      addr_ = std::exchange(o.addr_, nullptr);
      pages_ = std::exchange(o.pages_, 0);
    }
    return *this;
  }
  GrantMapping(const GrantMapping&) = delete;
  GrantMapping& operator=(const GrantMapping&) = delete;
  ~GrantMapping() { reset(); }

  [[nodiscard]] void* data() const noexcept { return addr_; }
  [[nodiscard]] std::byte* page(uint32_t i) const noexcept {
    return static_cast<std::byte*>(addr_) + static_cast<size_t>(i) * kPageSize;
  }
  [[nodiscard]] uint32_t pages() const noexcept { return pages_; }
  [[nodiscard]] size_t size_bytes() const noexcept { return static_cast<size_t>(pages_) * kPageSize; }
  explicit operator bool() const noexcept { return addr_ != nullptr; }

  // Unmaps now (no-op when empty).
  void reset() noexcept;

 private:
  GrantTable* owner_ = nullptr;
  void* addr_ = nullptr;
  uint32_t pages_ = 0;
};

// Same layout as xengnttab_grant_copy_segment_t (static_assert'ed in the
// libxen adapter), so a batch is handed to the kernel without conversion.
struct GrantCopySegment {
  union Ptr {
    void* virt;
    struct {
      GrantRef ref;
      uint16_t offset;
      DomId domid;
    } foreign;
  } source, dest;
  uint16_t len;
  uint16_t flags;  // kCopySourceGref | kCopyDestGref
  int16_t status;  // GNTST_* after copy()
};

inline constexpr uint16_t kCopySourceGref = 1u << 0;  // GNTCOPY_source_gref
inline constexpr uint16_t kCopyDestGref = 1u << 1;    // GNTCOPY_dest_gref

// What Linux gntdev refuses for a whole copy batch before Xen sees it: a
// segment with no grant side (local -> local), or a grant side whose
// offset + len runs past its page. Both GrantTable implementations apply it
// so a backend tested on the simulated host fails the same way on Xen.
[[nodiscard]] inline bool copy_batch_acceptable(std::span<const GrantCopySegment> segs) noexcept {
  for (const GrantCopySegment& s : segs) {
    const bool src_gref = (s.flags & kCopySourceGref) != 0;
    const bool dst_gref = (s.flags & kCopyDestGref) != 0;
    if (!src_gref && !dst_gref) return false;
    if (src_gref && s.source.foreign.offset + s.len > kPageSize) return false;
    if (dst_gref && s.dest.foreign.offset + s.len > kPageSize) return false;
  }
  return true;
}

class GrantTable : public XenHandle {
 public:
  virtual ~GrantTable() = default;

  // Maps `refs` (all granted by `dom`) into one contiguous range, read-only
  // unless `writable`. All or nothing: on failure nothing stays mapped and the
  // error is an errno: EINVAL when the hypervisor refused any ref (bad
  // ref/domain, a write map of a read-only grant... -- Linux gntdev reports
  // them all as EINVAL), ENOSPC over the set_max_grants() limit. Where the
  // implementation can tell, `status` (empty or refs.size() long) receives a
  // GNTST_* code per ref, as the hypervisor reports it.
  Result<GrantMapping> map(DomId dom, std::span<const GrantRef> refs, bool writable,
                           std::span<int16_t> status = {}) noexcept {
    auto m = do_map(dom, refs, writable, status);
    if (m) mapped_pages_.add(m->pages());
    return m;
  }

  // Grant copy of a batch in one call. Each segment gets its own GNTST_*
  // status; returns how many segments succeeded. An error only when the call
  // as a whole failed (then no status is meaningful).
  virtual Result<uint32_t> copy(std::span<GrantCopySegment> segs) noexcept = 0;

  // Upper bound of pages this handle may have mapped at once.
  virtual Status set_max_grants(uint32_t count) noexcept = 0;

  // Pages this handle has mapped now: what a daemon reports so an operator
  // (or the lab) can see that a destroyed guest left nothing mapped. Written
  // by the owning thread only, readable from any.
  [[nodiscard]] uint64_t mapped_pages() const noexcept { return mapped_pages_.get(); }

 protected:
  friend class GrantMapping;
  virtual Result<GrantMapping> do_map(DomId dom, std::span<const GrantRef> refs, bool writable,
                                      std::span<int16_t> status) noexcept = 0;
  virtual void unmap(void* addr, uint32_t pages) noexcept = 0;

 private:
  void release(void* addr, uint32_t pages) noexcept {
    mapped_pages_.set(mapped_pages_.get() - pages);
    unmap(addr, pages);
  }
  Counter mapped_pages_;
};

inline void GrantMapping::reset() noexcept {
  if (owner_ != nullptr && addr_ != nullptr) owner_->release(addr_, pages_);
  owner_ = nullptr;
  addr_ = nullptr;
  pages_ = 0;
}

}  // namespace xenpath
