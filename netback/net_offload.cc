#include "netback/net_offload.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace xenpath::offload {

namespace {

uint16_t to_network_order(uint16_t v) noexcept {
  if constexpr (std::endian::native == std::endian::little) return __builtin_bswap16(v);
  return v;
}

}  // namespace

uint16_t raw_sum(std::span<const uint8_t> bytes) noexcept {
  // 16-bit words read natively, as rte_raw_cksum does: the same integer sum,
  // so the same folded value.
  uint64_t sum = 0;
  const size_t words = bytes.size() / 2;
  for (size_t i = 0; i < words; ++i) {
    uint16_t v;
    std::memcpy(&v, bytes.data() + 2 * i, 2);
    sum += v;
  }
  if ((bytes.size() & 1) != 0) {
    uint16_t left = 0;
    std::memcpy(&left, bytes.data() + bytes.size() - 1, 1);
    sum += left;
  }
  sum = (sum & 0xffffffff) + (sum >> 32);
  sum = (sum & 0xffffffff) + (sum >> 32);
  return fold(static_cast<uint32_t>(sum));
}

void PieceSum::add(std::span<const uint8_t> piece) noexcept {
  uint16_t part = raw_sum(piece);
  if ((done_ & 1) != 0) part = __builtin_bswap16(part);  // this piece starts mid-word
  sum_ += part;
  done_ += piece.size();
}

uint16_t ipv4_header_checksum(const uint8_t* ip) noexcept {
  return static_cast<uint16_t>(~raw_sum({ip, (ip[0] & 0xfu) * 4u}));
}

bool l3_view(std::span<uint8_t> head, uint32_t pkt_len, bool v4, bool v6, uint32_t l2, uint32_t l3,
             L3View& v) noexcept {
  if (l2 + l3 > head.size()) return false;
  v.ip = head.data() + l2;
  v.l4_off = l2 + l3;
  if (v4) {
    if ((v.ip[0] >> 4) != 4 || (v.ip[0] & 0xf) * 4u != l3 || l3 < kIpv4MinHeaderLen) return false;
    const uint32_t total = load_be16(v.ip + 2);
    if (total < l3 || l2 + total > pkt_len) return false;
    v.v4 = true;
    v.l4_len = total - l3;
    return true;
  }
  if (v6) {
    if ((v.ip[0] >> 4) != 6 || l3 < kIpv6HeaderLen) return false;
    const uint32_t payload = load_be16(v.ip + 4);
    const uint32_t ext = l3 - kIpv6HeaderLen;
    if (payload < ext || l2 + kIpv6HeaderLen + payload > pkt_len) return false;
    v.v4 = false;
    v.l4_len = payload - ext;
    return true;
  }
  return false;
}

uint16_t pseudo_sum(const L3View& v, uint8_t proto, uint32_t len) noexcept {
  uint32_t sum = 0;
  const uint8_t* addrs = v.v4 ? v.ip + 12 : v.ip + 8;
  const size_t addr_bytes = v.v4 ? 8 : 32;
  for (size_t i = 0; i < addr_bytes; i += 2) sum += load_be16(addrs + i);
  sum += proto;
  sum += len & 0xffff;
  sum += len >> 16;
  // Summed in host order; the field is stored in network order.
  return to_network_order(fold(sum));
}

uint16_t l4_checksum(uint16_t raw, uint16_t pseudo, uint8_t proto) noexcept {
  uint16_t c = static_cast<uint16_t>(~fold(static_cast<uint32_t>(raw) + pseudo));
  if (c == 0 && proto == kProtoUdp) c = 0xffff;  // RFC 768: 0 means "no checksum"
  return c;
}

uint8_t gso_segment_tcp_flags(uint8_t flags, size_t i, size_t n) noexcept {
  if (i + 1 < n) flags = static_cast<uint8_t>(flags & ~(kTcpFlagFin | kTcpFlagPsh));
  if (i > 0) flags = static_cast<uint8_t>(flags & ~kTcpFlagCwr);
  return flags;
}

// ------------------------------------------------------------ coalescing

GroFrame gro_classify(const GroProbe& p) noexcept {
  GroFrame f;
  f.head = p.head;
  f.segments = p.segments;
  if (!p.ipv4) return f;
  if (p.ipv4_fragment) {
    // Maybe a piece of some flow's segment: nothing may overtake it.
    f.barrier = true;
    return f;
  }
  if (!p.tcp) return f;
  const uint32_t hdr = static_cast<uint32_t>(p.l2_len) + p.l3_len + p.l4_len;
  if (hdr > p.head_len || p.l2_len > 127 || p.l4_len < 20 || p.l4_len > 60) {
    // Of some flow we cannot tell: nothing may be moved past it.
    f.barrier = true;
    return f;
  }
  f.ip = p.head + p.l2_len;
  f.tcp = f.ip + p.l3_len;
  f.seq = load_be32(f.tcp + 4);
  f.ip_id = load_be16(f.ip + 4);
  f.l2_len = p.l2_len;
  f.l4_len = p.l4_len;
  // Pending transmit work (a same-process sender's metadata) is the
  // sender's to finish: such a frame's checksums are not filled in.
  if (p.offload_pending) return f;
  // inet_gro_receive: no IP options, no fragments; a frame padded past its
  // IP length (a runt) would merge its padding as payload.
  const uint32_t total = load_be16(f.ip + 2);
  const uint16_t frag = load_be16(f.ip + 6);
  if (p.l3_len != 20 || (frag & 0x3fff) != 0 || p.l2_len + total != p.pkt_len || total < 20u + p.l4_len) return f;
  f.payload = total - 20 - p.l4_len;
  const uint8_t flags = f.tcp[13];
  if (f.payload == 0 || (flags != kTcpFlagAck && flags != (kTcpFlagAck | kTcpFlagPsh))) return f;
  // The merge rewrites the head's header and relinks the chains.
  if (!p.writable) return f;
  // Checksums: what the port verified, else checked here as Linux's GRO
  // does (__skb_gro_checksum_complete); a bad one is never merged.
  if (p.ip_csum == CsumState::kBad) return f;
  if (p.ip_csum == CsumState::kUnknown && ipv4_header_checksum(f.ip) != 0) return f;
  if (p.l4_csum == CsumState::kBad) return f;
  if (p.l4_csum == CsumState::kUnknown) {
    const L3View v{f.ip, true, static_cast<uint32_t>(p.l2_len) + 20, total - 20u};
    uint16_t raw = 0;
    if (p.sum == nullptr || !p.sum(p.sum_ctx, v.l4_off, v.l4_len, raw)) return f;
    if (!l4_checksum_ok(raw, pseudo_sum(v, kProtoTcp, v.l4_len))) return f;
    // Checked: the receiver need not check again (netif data_validated).
    f.l4_verified = true;
  }
  f.psh = (flags & kTcpFlagPsh) != 0;
  f.eligible = true;
  return f;
}

namespace {

bool same_flow(const GroFrame& a, const GroFrame& b) noexcept {
  // Addresses and ports.
  return std::memcmp(a.ip + 12, b.ip + 12, 8) == 0 && std::memcmp(a.tcp, b.tcp, 4) == 0;
}

void group_start(GroGroup& g, const GroFrame& f, uint32_t idx) noexcept {
  g = GroGroup{};
  g.first = g.last = idx;
  g.frames = 1;
  if (!f.eligible) {
    g.open = false;  // a group of one (another protocol, or a frame not to merge)
    return;
  }
  g.next_seq = f.seq + f.payload;
  g.ip_len = load_be16(f.ip + 2);
  g.segs = f.segments;
  g.mss = static_cast<uint16_t>(std::min<uint32_t>(f.payload, UINT16_MAX));
  g.next_ip_id = static_cast<uint16_t>(f.ip_id + 1);
  g.open = !f.psh;
  g.psh = f.psh;
}

void group_join(GroGroup& g, const GroFrame& f, uint32_t idx) noexcept {
  g.last = idx;
  ++g.frames;
  g.next_seq += f.payload;
  g.ip_len += f.payload;
  g.segs += f.segments;
  g.next_ip_id = static_cast<uint16_t>(f.ip_id + 1);
  // tcp_gro_receive: a short segment or PSH ends the packet.
  if (f.payload < g.mss || f.psh) g.open = false;
  g.psh = f.psh;
}

}  // namespace

bool gro_may_join(const GroGroup& g, const GroFrame& first, const GroFrame& f, const pkt::CoalesceOptions& o) noexcept {
  if (!g.open || !f.eligible || f.seq != g.next_seq || f.payload > g.mss) return false;
  if (first.l2_len != f.l2_len || first.l4_len != f.l4_len) return false;
  if (std::memcmp(first.head, f.head, first.l2_len) != 0) return false;  // MACs, VLAN tags
  if (first.ip[1] != f.ip[1] || first.ip[8] != f.ip[8]) return false;    // TOS, TTL
  const bool df = (load_be16(first.ip + 6) & 0x4000) != 0;
  if (df != ((load_be16(f.ip + 6) & 0x4000) != 0)) return false;
  // Without DF the IDs must count up (librte_gro checks the same).
  if (!df && f.ip_id != g.next_ip_id) return false;
  // ack, data offset, window; the flags are known to be ACK (or ACK|PSH);
  // the options byte for byte.
  if (std::memcmp(first.tcp + 8, f.tcp + 8, 5) != 0 || std::memcmp(first.tcp + 14, f.tcp + 14, 2) != 0) return false;
  if (std::memcmp(first.tcp + 20, f.tcp + 20, first.l4_len - 20u) != 0) return false;
  if (first.l2_len + g.ip_len + f.payload > o.max_len) return false;
  if (g.segs + f.segments > o.max_segments) return false;
  return true;
}

void gro_plan(std::span<const GroFrame> fr, const pkt::CoalesceOptions& o, GroPlan& out) noexcept {
  const uint32_t n = static_cast<uint32_t>(std::min(fr.size(), kGroBurstMax));
  uint32_t flow_group[kGroBurstMax];  // flows seen: their latest group
  uint32_t n_flows = 0;
  out.n = n;
  out.n_groups = 0;
  for (uint32_t i = 0; i < n; ++i) {
    out.next_in[i] = n;
    if (fr[i].barrier) {
      for (uint32_t k = 0; k < n_flows; ++k) out.groups[flow_group[k]].open = false;
    }
    uint32_t flow = n_flows;
    if (fr[i].ip != nullptr) {
      for (uint32_t k = 0; k < n_flows; ++k) {
        if (same_flow(fr[out.groups[flow_group[k]].first], fr[i])) {
          flow = k;
          break;
        }
      }
    }
    if (flow < n_flows) {
      GroGroup& g = out.groups[flow_group[flow]];
      if (gro_may_join(g, fr[g.first], fr[i], o)) {
        out.next_in[g.last] = i;
        out.group_of[i] = flow_group[flow];
        group_join(g, fr[i], i);
        continue;
      }
      g.open = false;  // whatever follows starts after this frame
    }
    // A group of its own (a frame of another protocol is its own group
    // and never a flow's).
    GroGroup& g = out.groups[out.n_groups];
    group_start(g, fr[i], i);
    out.group_of[i] = out.n_groups;
    if (fr[i].ip != nullptr) {
      if (flow < n_flows) flow_group[flow] = out.n_groups;
      else flow_group[n_flows++] = out.n_groups;
    }
    ++out.n_groups;
  }
}

}  // namespace xenpath::offload
