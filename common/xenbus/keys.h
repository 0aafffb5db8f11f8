// Reading keys a frontend (a guest) wrote: strict parsing, because anything
// under device/ is hostile input, and the shared-ring references of single-
// and multi-page rings as the Linux backends accept them.
// Pure functions over a XenStore; callers pass their transaction so all
// frontend keys are read in one.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "common/log.h"
#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"

namespace xenpath {

// Strict unsigned decimal: digits only, no sign, no spaces, no leading zero
// (so two spellings cannot name one thing), no overflow.
template <typename T>
std::optional<T> parse_decimal(std::string_view s) noexcept {
  if (s.empty() || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  T v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// Reads `<dir>/<key>` as a strict decimal. ENOENT if absent, EINVAL if not a
// number that fits T.
template <typename T>
Result<T> read_decimal(XenStore& xs, XsTxn t, std::string_view dir, std::string_view key) noexcept {
  std::string path;
  path.reserve(dir.size() + 1 + key.size());
  path.append(dir).append("/").append(key);
  XP_ASSIGN_OR_RETURN(std::string v, xs.read(t, path));
  auto n = parse_decimal<T>(v);
  if (!n) return unexpected(EINVAL);
  return *n;
}

struct RingRefs {
  unsigned order = 0;          // ring-page-order: the ring is 2^order pages
  std::vector<GrantRef> refs;  // 2^order references, in ring order
};

// The frontend's "multi-queue-num-queues" under `fe` (absent: 1), which
// must be 1..max_queues. EINVAL, logged on `log` as the guest's error, when
// it is malformed or out of range; other errors (a transaction to retry)
// pass through.
Result<uint32_t> read_queue_count(XenStore& xs, XsTxn t, std::string_view fe, uint32_t max_queues,
                                  DeviceLog& log) noexcept;

// Writes "<dir>/<key>" = value in decimal (a backend's feature keys).
Status write_decimal(XenStore& xs, XsTxn t, std::string_view dir, std::string_view key, uint64_t value) noexcept;

// The frontend's ring references under `dir` (the frontend's directory or
// one of its queue-%u subdirectories). Without "ring-page-order" the ring is
// one page at "<ref_key>"; with it (even 0) the pages are
// "<ref_key>0".."<ref_key>N-1", as Linux blkfront/blkback do. EINVAL for an
// order above `max_order`, a missing or malformed reference.
Result<RingRefs> read_ring_refs(XenStore& xs, XsTxn t, std::string_view dir, unsigned max_order,
                                std::string_view ref_key = "ring-ref") noexcept;

}  // namespace xenpath
