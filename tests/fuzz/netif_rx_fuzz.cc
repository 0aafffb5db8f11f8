// Fuzz target: guest RX planning (netback/netif_rx). Arbitrary packet
// shapes and posted-request counts must give copies that never cross a guest
// page, account every packet byte once, and one response per used request.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "netback/net_protocol_rx.h"

namespace {
void check(bool ok) {
  if (!ok) __builtin_trap();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  static std::vector<std::byte> backing(20 * 4096);
  std::vector<netif_rx_request> reqs(data[0] % 64);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].id = static_cast<uint16_t>(i * 3);
    reqs[i].gref = static_cast<xenpath::GrantRef>(i + 1);
  }
  std::vector<xenpath::GrantCopySegment> copies(1 + data[1] % 128);
  std::vector<uint16_t> owner(copies.size());
  std::vector<netif_rx_response> rsps(64);
  xenpath::RxBatch batch(copies, owner, rsps);
  batch.reset(reqs, 7);
  size_t pos = 2;
  uint64_t planned_bytes = 0;
  for (int pkts = 0; pkts < 64 && pos + 2 <= size; ++pkts) {
    // A packet: a segment count and, per segment, a length.
    const unsigned nseg = 1 + data[pos++] % 24;
    std::vector<xenpath::PacketSegment> segs;
    size_t off = 0;
    for (unsigned i = 0; i < nseg && pos + 2 <= size; ++i, pos += 2) {
      uint32_t len = static_cast<uint32_t>(data[pos] | (data[pos + 1] << 8)) % 9000;
      if (off + len > backing.size()) len = 0;
      segs.push_back({backing.data() + off, len});
      off += len;
    }
    xenpath::RxPacket pkt;
    pkt.segs = segs;
    pkt.gso_type = (nseg & 1) != 0 ? XEN_NETIF_GSO_TYPE_TCPV4 : XEN_NETIF_GSO_TYPE_NONE;
    pkt.gso_size = 1448;
    pkt.has_hash = (nseg & 2) != 0;
    const unsigned before = batch.requests_used();
    const size_t copies_before = batch.copies().size();
    const auto v = batch.add(pkt);
    if (v != xenpath::RxVerdict::kPlanned) {
      check(batch.requests_used() == before && batch.copies().size() == copies_before);
      continue;
    }
    uint64_t copied = 0;
    for (size_t i = copies_before; i < batch.copies().size(); ++i) {
      const auto& c = batch.copies()[i];
      check(c.len > 0 && c.dest.foreign.offset + c.len <= xenpath::kPageSize);
      check(owner[i] >= before && owner[i] < batch.requests_used());
      check(c.dest.foreign.ref == reqs[owner[i]].gref);
      copied += c.len;
    }
    check(copied == off);
    planned_bytes += off;
    check(batch.requests_used() - before ==
          xenpath::rx_slots_needed(static_cast<uint32_t>(off), pkt.gso_type != 0, pkt.has_hash));
  }
  check(batch.bytes() == planned_bytes);
  check(batch.requests_used() <= reqs.size());
  return 0;
}
