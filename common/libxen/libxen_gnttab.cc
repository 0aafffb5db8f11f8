#include "common/libxen/libxen_gnttab.h"

#include <sys/mman.h>
#include <xengnttab.h>

#include <cstddef>
#include <vector>

namespace xenpath {
namespace {

// GrantCopySegment is handed to the kernel as it is: keep it byte-identical.
static_assert(sizeof(GrantCopySegment) == sizeof(xengnttab_grant_copy_segment_t));
static_assert(offsetof(GrantCopySegment, source) == offsetof(xengnttab_grant_copy_segment_t, source));
static_assert(offsetof(GrantCopySegment, dest) == offsetof(xengnttab_grant_copy_segment_t, dest));
static_assert(offsetof(GrantCopySegment, len) == offsetof(xengnttab_grant_copy_segment_t, len));
static_assert(offsetof(GrantCopySegment, flags) == offsetof(xengnttab_grant_copy_segment_t, flags));
static_assert(offsetof(GrantCopySegment, status) == offsetof(xengnttab_grant_copy_segment_t, status));
static_assert(offsetof(GrantCopySegment, source.foreign.ref) == offsetof(xengnttab_grant_copy_segment_t, source.foreign.ref));
static_assert(offsetof(GrantCopySegment, source.foreign.offset) ==
              offsetof(xengnttab_grant_copy_segment_t, source.foreign.offset));
static_assert(offsetof(GrantCopySegment, source.foreign.domid) == offsetof(xengnttab_grant_copy_segment_t, source.foreign.domid));

class LibxenGrantTableImpl final : public GrantTable {
 public:
  explicit LibxenGrantTableImpl(xengnttab_handle* h) noexcept : h_(h) {}
  ~LibxenGrantTableImpl() override { xengnttab_close(h_); }

  Result<uint32_t> copy(std::span<GrantCopySegment> segs) noexcept override {
    if (segs.empty()) return 0u;
    if (xengnttab_grant_copy(h_, static_cast<uint32_t>(segs.size()),
                             reinterpret_cast<xengnttab_grant_copy_segment_t*>(segs.data())) != 0) {
      return unexpected_errno();
    }
    uint32_t okay = 0;
    for (const auto& s : segs) okay += s.status == 0 ? 1 : 0;
    return okay;
  }

  Status set_max_grants(uint32_t count) noexcept override {
    if (xengnttab_set_max_grants(h_, count) != 0) return unexpected_errno();
    return ok();
  }

 protected:
  Result<GrantMapping> do_map(DomId dom, std::span<const GrantRef> refs, bool writable,
                              std::span<int16_t> status) noexcept override {
    if (refs.empty()) return unexpected(EINVAL);
    // libxengnttab takes a non-const array; it does not write to it.
    std::vector<uint32_t> r(refs.begin(), refs.end());
    void* addr = xengnttab_map_domain_grant_refs(h_, static_cast<uint32_t>(r.size()), dom, r.data(),
                                                 writable ? PROT_READ | PROT_WRITE : PROT_READ);
    if (addr == nullptr) {
      // gntdev reports the batch as a whole: no per-ref status to give.
      const auto e = unexpected_errno();
      for (auto& s : status) s = -1;  // GNTST_general_error
      return e;
    }
    for (auto& s : status) s = 0;
    return GrantMapping(this, addr, static_cast<uint32_t>(refs.size()));
  }

  void unmap(void* addr, uint32_t pages) noexcept override { xengnttab_unmap(h_, addr, pages); }

 private:
  xengnttab_handle* h_;
};

}  // namespace

Result<std::unique_ptr<GrantTable>> LibxenGrantTable::open() noexcept {
  xengnttab_handle* h = xengnttab_open(nullptr, 0);
  if (h == nullptr) return unexpected_errno();
  return std::unique_ptr<GrantTable>(new LibxenGrantTableImpl(h));
}

}  // namespace xenpath
