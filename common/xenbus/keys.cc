#include "common/xenbus/keys.h"

#include <fmt/format.h>

namespace xenpath {

Status write_decimal(XenStore& xs, XsTxn t, std::string_view dir, std::string_view key, uint64_t value) noexcept {
  try {
    return xs.write(t, fmt::format("{}/{}", dir, key), fmt::format("{}", value));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<RingRefs> read_ring_refs(XenStore& xs, XsTxn t, std::string_view dir, unsigned max_order,
                                std::string_view ref_key) noexcept {
  RingRefs out;
  auto order = read_decimal<uint32_t>(xs, t, dir, "ring-page-order");
  if (!order) {
    if (order.error() != ENOENT) return unexpected(order.error());
    XP_ASSIGN_OR_RETURN(GrantRef ref, read_decimal<GrantRef>(xs, t, dir, ref_key));
    out.refs.push_back(ref);
    return out;
  }
  if (*order > max_order) return unexpected(EINVAL);
  out.order = *order;
  const uint32_t pages = 1u << *order;
  out.refs.reserve(pages);
  for (uint32_t i = 0; i < pages; ++i) {
    auto ref = read_decimal<GrantRef>(xs, t, dir, fmt::format("{}{}", ref_key, i));
    // A missing page reference is a malformed frontend, not an absent key.
    if (!ref) return unexpected(ref.error() == ENOENT ? EINVAL : ref.error());
    out.refs.push_back(*ref);
  }
  return out;
}

Result<uint32_t> read_queue_count(XenStore& xs, XsTxn t, std::string_view fe, uint32_t max_queues,
                                  DeviceLog& log) noexcept {
  uint32_t n = 1;
  if (auto v = read_decimal<uint32_t>(xs, t, fe, "multi-queue-num-queues")) {
    n = *v;
  } else if (v.error() != ENOENT) {
    if (v.error() == EINVAL) log.guest("malformed multi-queue-num-queues");
    return unexpected(v.error());
  }
  if (n == 0 || n > max_queues) {
    log.guest("frontend asked for {} queues, at most {} offered", n, max_queues);
    return unexpected(EINVAL);
  }
  return n;
}

}  // namespace xenpath
