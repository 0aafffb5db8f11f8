// Fuzz target: netif control-ring messages and frame hashing
// (netback/ctrl_ring). The guest's key/table pages come from the input; any
// sequence of messages must leave a table that only names existing queues,
// answer every message with its id/type and a defined status, and hash
// arbitrary frames without reading past them.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "netback/net_ctrl.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// Grants 0..3 are pages whose bytes come from the input; anything else is bad.
class FuzzGrants final : public xenpath::GrantTable {
 public:
  explicit FuzzGrants(std::span<const uint8_t> fill) : fill_(fill) {}
  xenpath::Result<uint32_t> copy(std::span<xenpath::GrantCopySegment> segs) noexcept override {
    uint32_t ok = 0;
    for (auto& s : segs) {
      const bool valid = (s.flags == xenpath::kCopySourceGref) && s.source.foreign.ref < kPages &&
                         s.source.foreign.offset + s.len <= xenpath::kPageSize;
      if (!valid) {
        s.status = GNTST_bad_gntref;
        continue;
      }
      auto* dst = static_cast<uint8_t*>(s.dest.virt);
      for (size_t i = 0; i < s.len; ++i) {
        const size_t at = s.source.foreign.ref * 131u + s.source.foreign.offset + i;
        dst[i] = fill_.empty() ? 0 : fill_[at % fill_.size()];
      }
      s.status = GNTST_okay;
      ++ok;
    }
    return ok;
  }
  xenpath::Status set_max_grants(uint32_t) noexcept override { return xenpath::ok(); }

 protected:
  xenpath::Result<xenpath::GrantMapping> do_map(xenpath::DomId, std::span<const xenpath::GrantRef>, bool,
                                                std::span<int16_t>) noexcept override {
    return xenpath::unexpected(ENOSYS);
  }
  void unmap(void*, uint32_t) noexcept override {}

 private:
  static constexpr uint32_t kPages = 4;
  std::span<const uint8_t> fill_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint32_t queues = 1u + (data[0] & 7u);
  FuzzGrants grants({data, size});
  xenpath::NetifCtrl ctrl(5, queues);
  size_t pos = 1;
  // A guest sends a handful of messages at setup; 64 reach every state.
  for (int msgs = 0; msgs < 64 && pos + sizeof(xen_netif_ctrl_request) <= size; ++msgs) {
    xen_netif_ctrl_request req;
    std::memcpy(&req, data + pos, sizeof(req));
    pos += sizeof(req);
    req.type = static_cast<uint16_t>(req.type % 12);            // mostly known types
    if ((req.data[0] & 0x80000000u) == 0) req.data[0] &= 0xff;  // often small grefs/sizes
    if ((req.data[1] & 0x80000000u) == 0) req.data[1] &= 0x1ff;
    if ((req.data[2] & 0x80000000u) == 0) req.data[2] &= 0xff;
    const auto rsp = ctrl.handle(req, grants);
    check(rsp.id == req.id && rsp.type == req.type);
    check(rsp.status <= XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
    check(ctrl.mapping().size() <= xenpath::kHashMappingMax);
    for (uint32_t q : ctrl.mapping()) check(q < queues);
    check(ctrl.queue_for(req.data[0] * 2654435761u) < queues);
    if (ctrl.algorithm() == XEN_NETIF_CTRL_HASH_ALGORITHM_NONE) check(!ctrl.hash_frame({data, size}));
  }
  // The input as a frame, every prefix of its first 200 bytes.
  for (size_t n = 0; n <= std::min<size_t>(size, 200); n += 7) {
    auto h = ctrl.hash_frame({data, n});
    if (h) check(h->type <= _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP && (ctrl.flags() & (1u << h->type)) != 0);
  }
  xenpath::MulticastFilter f;
  for (size_t i = 0; i + 7 <= size && i < 7 * 96; i += 7) {
    xenpath::MulticastFilter::Mac m;
    std::memcpy(m.data(), data + i + 1, 6);
    if ((data[i] & 1) != 0) f.add(m);
    else f.del(m);
    check(f.size() <= xenpath::MulticastFilter::kMax);
    check((m[0] & 1) == 0 ? f.accepts(m) : true);
  }
  return 0;
}
