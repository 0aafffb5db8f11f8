// SimGrantTable: a grant-table handle (what /dev/xen/gntdev + libxengnttab
// give a backend) acting as domain `self` on the simulated host.
//
// Map: one batch of refs of one foreign domain becomes ONE contiguous range:
// a PROT_NONE reservation over which each granted page of the guest's memfd
// is mmapped MAP_SHARED|MAP_FIXED, PROT_READ for a read-only map (a write
// faults, as on Xen) and PROT_READ|PROT_WRITE for a writable one. All or
// nothing. Per-ref status codes are the ones Xen's map_grant_ref() gives:
//   ref beyond the guest's grant table          GNTST_bad_gntref
//   unknown or destroyed domain                 GNTST_bad_domain
//   entry not granted, or granted to another    GNTST_general_error
//   writable map of a read-only grant           GNTST_general_error
//   a 129th live map of one ref (pin overflow)  GNTST_general_error
// (For a while upstream map_grant_ref() had a misplaced parenthesis,
// `rc = _set_status(...) != GNTST_okay`, so those two failures read 1 on
// some older hypervisors; current Xen reports GNTST_general_error, as here.)
// In a failed batch the refs that would have mapped read GNTST_okay, as each
// op of the hypercall does.
//
// Errno of a failed map, as Linux gntdev/libxengnttab report it:
//   EINVAL  any ref failed (gntdev's mmap turns every non-okay status into
//           -EINVAL; the sim also says which in `status`), an empty batch,
//           `status` of the wrong length, or more than kMaxRefsPerMap refs
//           (gntdev's `limit` module parameter, default 65536);
//   ENOSPC  the pages would exceed set_max_grants() (each status entry then
//           reads GNTST_no_device_space, Xen's code for "no room to track
//           another mapping"; nothing was asked of the hypervisor);
//   ENOMEM  the address-space reservation failed.
//
// Copy: per-segment status as Xen's gnttab_copy() gives it, checked in its
// order (source domain, dest domain, source grant, dest grant):
//   unknown or destroyed domain                 GNTST_bad_domain
//   ref beyond the grant table                  GNTST_bad_gntref
//   not granted, or granted to another domain   GNTST_general_error
//   dest is a read-only grant                   GNTST_general_error
// The local side is a virtual address and may cross a page boundary. A
// segment with len 0 is okay without any check (gntdev issues no op for it).
// Malformed batches never reach Xen on Linux: gntdev fails the whole ioctl
// with EINVAL for a local<->local segment or a grant side whose offset+len
// exceeds the page, so Xen's GNTST_bad_copy_arg cannot be seen through
// libxengnttab. copy() does the same, but checks the whole batch first and
// copies nothing when it fails (gntdev may already have done earlier
// segments; callers must treat the batch as failed either way).
//
// Thread: owned by one thread (a reactor); the hypervisor state it touches
// is locked inside SimHypervisor. Mappings must be destroyed before the
// handle (the destructor releases leftovers and logs them as a bug).
//
// Guest-shared memory: every mapping it returns is guest memory that the
// guest may rewrite at any time; copy() reads/writes granted guest pages.
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "common/xen/grant_table.h"
#include "common/xen/types.h"

namespace xenpath::sim {

class SimHypervisor;
class GuestDomain;

class SimGrantTable final : public GrantTable {
 public:
  static constexpr uint32_t kMaxRefsPerMap = 65536;

  SimGrantTable(SimHypervisor& hv, DomId self) noexcept : hv_(hv), self_(self) {}
  ~SimGrantTable() override;
  SimGrantTable(const SimGrantTable&) = delete;
  SimGrantTable& operator=(const SimGrantTable&) = delete;

  Result<uint32_t> copy(std::span<GrantCopySegment> segs) noexcept override;
  // Limit on pages mapped at once through this handle; no limit by default.
  Status set_max_grants(uint32_t count) noexcept override;

  [[nodiscard]] DomId self() const noexcept { return self_; }
  // Pages this handle has mapped now.
  [[nodiscard]] uint32_t mapped_pages() const noexcept { return live_pages_; }

 protected:
  Result<GrantMapping> do_map(DomId dom, std::span<const GrantRef> refs, bool writable,
                              std::span<int16_t> status) noexcept override;
  void unmap(void* addr, uint32_t pages) noexcept override;

 private:
  struct Mapping {
    GuestDomain* dom;
    std::vector<GrantRef> refs;
    bool writable;
  };

  int16_t copy_one(GrantCopySegment& seg) noexcept;
  void release(void* addr, Mapping& m) noexcept;

  SimHypervisor& hv_;
  const DomId self_;
  std::unordered_map<void*, Mapping> maps_;
  uint32_t live_pages_ = 0;
  uint32_t max_grants_ = std::numeric_limits<uint32_t>::max();
};

}  // namespace xenpath::sim
