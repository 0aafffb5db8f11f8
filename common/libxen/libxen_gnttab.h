// LibxenGrantTable: the real GrantTable, over libxengnttab and Linux's
// /dev/xen/gntdev. Production code for a Xen dom0 or driver domain.
//
// Map: xengnttab_map_domain_grant_refs() with PROT_READ, or
// PROT_READ|PROT_WRITE for a writable map, gives one contiguous range per
// batch; all or nothing (libxengnttab undoes a partial map). The kernel says
// only that the batch failed, not which ref: a failed map is EINVAL (gntdev
// turns every non-okay GNTST status into -EINVAL) and `status` is left
// untouched; a successful one fills `status` with GNTST_okay. More refs than
// gntdev's `limit` module parameter (65536 by default) is EINVAL too.
//
// set_max_grants(): passed to libxengnttab (current kernels lack the ioctl
// and libxengnttab ignores that), and also enforced here, so that the limit
// means the same as on the simulated host: a map that would take this
// handle past `count` mapped pages fails with ENOSPC before reaching the
// kernel.
//
// Copy: the batch goes to xengnttab_grant_copy() as it is (GrantCopySegment
// has xengnttab_grant_copy_segment_t's layout, checked at compile time).
// gntdev rejects the whole ioctl with EINVAL for a local<->local segment or
// a grant side with offset+len beyond the page, possibly after it already
// copied earlier segments; copy() checks those first and fails with EINVAL
// without copying anything, as SimGrantTable does.
//
// Thread: owned by one thread (a reactor), like the libxengnttab handle.
// Guest-shared memory: every mapping it returns, and the granted pages
// copy() reads or writes.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <span>

#include "common/libxen/libxen_log.h"
#include "common/result.h"
#include "common/xen/grant_table.h"
#include "common/xen/types.h"

struct xengntdev_handle;

namespace xenpath {

class LibxenGrantTable final : public GrantTable {
 public:
  // ENOENT/EACCES... from opening /dev/xen/gntdev when it is missing or
  // forbidden.
  static Result<std::unique_ptr<GrantTable>> open() noexcept;
  ~LibxenGrantTable() override;

  Result<uint32_t> copy(std::span<GrantCopySegment> segs) noexcept override;
  Status set_max_grants(uint32_t count) noexcept override;

 protected:
  Result<GrantMapping> do_map(DomId dom, std::span<const GrantRef> refs, bool writable,
                              std::span<int16_t> status) noexcept override;
  void unmap(void* addr, uint32_t pages) noexcept override;

 private:
  LibxenGrantTable(xengntdev_handle* h, std::unique_ptr<LibxenLog> log) noexcept : log_(std::move(log)), h_(h) {}

  // The library's messages (a failed map's "mmap failed" included), rate
  // limited: declared first, so it outlives the handle.
  std::unique_ptr<LibxenLog> log_;
  xengntdev_handle* h_;
  uint32_t live_pages_ = 0;
  uint32_t max_grants_ = std::numeric_limits<uint32_t>::max();
};

}  // namespace xenpath
