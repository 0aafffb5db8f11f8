// SimGrantTable: GrantTable on the simulated host, acting as domain `self`.
//
// Owned by one thread, like a gntdev handle. Maps are real mmaps of the
// granting domain's memfd pages: PROT_READ for read-only maps, so a write
// through a read-only mapping faults exactly as on Xen. Status codes are
// those of Xen's GNTTABOP_map_grant_ref / GNTTABOP_copy:
//   unknown or dying domain          -> GNTST_bad_domain
//   ref beyond the grant table       -> GNTST_bad_gntref
//   entry not granted, or to another -> GNTST_general_error
//   write access to a read-only grant-> GNTST_general_error
//   copy crossing the granted page   -> GNTST_bad_copy_arg
// A failed map call reports EINVAL (what gntdev's mmap returns when a map
// hypercall fails) and leaves nothing mapped; ENOSPC past set_max_grants.
// Copy arguments gntdev itself rejects (local->local, foreign offset+len
// beyond the page) fail the whole call with EINVAL before any copying.
#pragma once

#include <memory>
#include <unordered_map>
#include <vector>

#include "common/xen/grant_table.h"

namespace xenpath::sim {

class SimHypervisor;
class SimDomainImpl;

class SimGrantTable final : public GrantTable {
 public:
  SimGrantTable(SimHypervisor& hv, DomId self) noexcept : hv_(hv), self_(self) {}
  ~SimGrantTable() override;

  Result<uint32_t> copy(std::span<GrantCopySegment> segs) noexcept override;
  Status set_max_grants(uint32_t count) noexcept override;

 protected:
  Result<GrantMapping> do_map(DomId dom, std::span<const GrantRef> refs, bool writable,
                              std::span<int16_t> status) noexcept override;
  void unmap(void* addr, uint32_t pages) noexcept override;

 private:
  struct Mapping {
    std::shared_ptr<SimDomainImpl> dom;  // keeps the memory alive while mapped
    std::vector<GrantRef> refs;
  };

  SimHypervisor& hv_;
  DomId self_;
  uint32_t max_grants_ = 1024 * 1024;
  uint32_t mapped_ = 0;
  std::unordered_map<void*, Mapping> maps_;
};

}  // namespace xenpath::sim
