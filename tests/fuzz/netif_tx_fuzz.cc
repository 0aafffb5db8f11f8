// Fuzz target: guest TX request chains (netback/netif_tx). Any ring content
// must yield a plan whose pieces stay inside their granted pages, cover the
// packet exactly once, and owe exactly one response per consumed slot.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "netback/net_protocol_tx.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void verify(const xenpath::TxPlan& p, std::span<const netif_tx_request> reqs, const xenpath::NetifTxLimits& lim) {
  using xenpath::TxVerdict;
  if (p.verdict == TxVerdict::kNeedMore) {
    check(p.consumed == 0);
    return;
  }
  if (p.verdict == TxVerdict::kFatal) return;
  check(p.consumed >= 1 && p.consumed <= reqs.size());
  unsigned responses = 0;
  for (const auto& s : p.slot_span()) responses += 1u + s.nulls;
  check(responses == p.consumed);
  check(p.slots[0].id == reqs[0].id);
  if (p.verdict != TxVerdict::kPacket) return;
  check(p.size == reqs[0].size && p.size >= xenpath::kEthHeaderLen);
  std::vector<unsigned> per_slot(p.n_slots, 0);
  uint32_t total = 0;
  uint32_t header = 0;
  bool data_seen = false;
  for (const auto& pc : p.piece_span()) {
    check(pc.len > 0 && static_cast<uint32_t>(pc.offset) + pc.len <= xenpath::kPageSize);
    check(pc.slot < p.n_slots);
    per_slot[pc.slot]++;
    total += pc.len;
    if (pc.kind == xenpath::TxPiece::kHeader) {
      check(!data_seen);
      header += pc.len;
    } else {
      data_seen = true;
    }
  }
  check(total == p.size);
  check(header == p.header_len && header == std::min<uint32_t>(lim.header_copy, p.size));
  for (unsigned s = 0; s < p.n_slots; ++s) check(per_slot[s] == p.slots[s].pieces);
  check(p.n_slots <= 1u + lim.legacy_slots_max);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  xenpath::NetifTxLimits lim;
  lim.copy_below = (data[0] & 1) != 0 ? 512 : 0;
  lim.header_copy = (data[0] & 2) != 0 ? 128 : 54;
  const bool more_published = (data[1] & 1) != 0;
  const size_t n = (size - 2) / sizeof(netif_tx_request);
  std::vector<netif_tx_request> reqs(n);
  if (n > 0) std::memcpy(reqs.data(), data + 2, n * sizeof(netif_tx_request));
  // Random flags set more_data half the time; keep sizes plausible often
  // enough to reach the piece builder.
  if ((data[1] & 2) != 0) {
    for (auto& r : reqs) {
      r.offset &= 0x0fff;
      r.size &= 0x0fff;
    }
  }
  size_t pos = 0;
  for (int guard = 0; pos < n && guard < 4096; ++guard) {
    xenpath::TxPlan p;
    const std::span<const netif_tx_request> rest(reqs.data() + pos, n - pos);
    xenpath::parse_tx(rest, more_published, lim, p);
    verify(p, rest, lim);
    if (p.verdict == xenpath::TxVerdict::kNeedMore || p.verdict == xenpath::TxVerdict::kFatal) break;
    pos += p.consumed;
  }
  return 0;
}
