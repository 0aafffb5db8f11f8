// The DPDK adapter's packet operations: the pkt:: API of port.h over mbuf
// chains, the software checksums the ports fall back on, and the GRO merge
// (the grouping is offload::gro_plan's; the chaining librte_gro's).
#include <stdio.h>

#include <algorithm>
#include <cstring>
#include <string>

#include <rte_byteorder.h>
#include <rte_ethdev.h>
#include <rte_gro.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_net.h>
#include <rte_tcp.h>

#include "netback/net_offload.h"
#include "netback/port_dpdk_internal.h"

namespace xenpath {

namespace dpdk_detail {

namespace {

using offload::csum_field_off;
using offload::store_be16;

uint8_t l4_proto(uint64_t f) noexcept {
  return (f & RTE_MBUF_F_TX_L4_MASK) == RTE_MBUF_F_TX_UDP_CKSUM ? offload::kProtoUdp : offload::kProtoTcp;
}

}  // namespace

bool raw_sum(const rte_mbuf* m, uint32_t off, uint32_t len, uint16_t& out) noexcept {
  if (static_cast<uint64_t>(off) + len > m->pkt_len) return false;
  const rte_mbuf* s = m;
  while (s != nullptr && off >= s->data_len) {
    off -= s->data_len;
    s = s->next;
  }
  offload::PieceSum sum;
  uint32_t done = 0;
  while (done < len) {
    if (s == nullptr) return false;
    const uint32_t n = std::min<uint32_t>(s->data_len - off, len - done);
    sum.add({rte_pktmbuf_mtod_offset(s, const uint8_t*, off), n});
    done += n;
    off = 0;
    s = s->next;
  }
  out = sum.folded();
  return true;
}

bool sw_checksums(rte_mbuf* m, bool do_ip, bool do_l4) noexcept {
  const uint64_t f = m->ol_flags;
  do_ip = do_ip && (f & RTE_MBUF_F_TX_IP_CKSUM) != 0;
  const bool l4_pending =
      (f & RTE_MBUF_F_TX_L4_MASK) == RTE_MBUF_F_TX_TCP_CKSUM || (f & RTE_MBUF_F_TX_L4_MASK) == RTE_MBUF_F_TX_UDP_CKSUM;
  do_l4 = do_l4 && l4_pending;
  if (!do_ip && !do_l4) return true;
  if (!head_writable(m)) return false;
  offload::L3View v;
  if (!l3_view(m, v)) return false;
  if (do_ip && !v.v4) return false;
  const uint8_t proto = l4_proto(f);
  const uint32_t field = v.l4_off + csum_field_off(proto);
  if (do_l4 && (field + 2 > m->data_len || v.l4_len < csum_field_off(proto) + 2)) return false;
  if (do_ip) {
    store_be16(v.ip + 10, 0);
    const uint16_t c = offload::ipv4_header_checksum(v.ip);
    std::memcpy(v.ip + 10, &c, 2);
    m->ol_flags &= ~RTE_MBUF_F_TX_IP_CKSUM;
  }
  if (do_l4) {
    uint8_t* fp = rte_pktmbuf_mtod_offset(m, uint8_t*, field);
    store_be16(fp, 0);
    uint16_t raw = 0;
    if (!raw_sum(m, v.l4_off, v.l4_len, raw)) return false;
    const uint16_t c = offload::l4_checksum(raw, offload::pseudo_sum(v, proto, v.l4_len), proto);
    std::memcpy(fp, &c, 2);
    m->ol_flags &= ~RTE_MBUF_F_TX_L4_MASK;
  }
  return true;
}

// We write the pseudo-header sum ourselves: a guest's partial checksum
// follows Linux's convention (with length), not DPDK's.
bool hw_checksum_prepare(rte_mbuf* m, bool ip, bool l4) noexcept {
  const uint64_t f = m->ol_flags;
  const bool tso = (f & RTE_MBUF_F_TX_TCP_SEG) != 0;
  ip = ip && (f & RTE_MBUF_F_TX_IP_CKSUM) != 0;
  l4 = l4 && (tso || (f & RTE_MBUF_F_TX_L4_MASK) != 0);
  if (!ip && !l4) return true;
  if (!head_writable(m)) return false;
  offload::L3View v;
  if (!l3_view(m, v)) return false;
  if (ip) store_be16(v.ip + 10, 0);
  if (l4) {
    const uint8_t proto = tso ? uint8_t{offload::kProtoTcp} : l4_proto(f);
    const uint32_t field = v.l4_off + csum_field_off(proto);
    if (field + 2 > m->data_len) return false;
    const uint16_t ph = offload::pseudo_sum(v, proto, tso ? 0 : v.l4_len);
    std::memcpy(rte_pktmbuf_mtod_offset(m, uint8_t*, field), &ph, 2);
  }
  return true;
}

bool rx_offload_to_pending(rte_mbuf* m) noexcept {
  const uint64_t f = m->ol_flags;
  const bool gso = (f & RTE_MBUF_F_RX_LRO) != 0;
  const bool partial = (f & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_NONE;
  if (!gso && !partial) return true;
  rte_net_hdr_lens lens{};
  const uint32_t pt = rte_net_get_ptype(m, &lens, RTE_PTYPE_L2_MASK | RTE_PTYPE_L3_MASK | RTE_PTYPE_L4_MASK);
  const uint32_t l4 = pt & RTE_PTYPE_L4_MASK;
  const bool v4 = RTE_ETH_IS_IPV4_HDR(pt);
  const bool v6 = RTE_ETH_IS_IPV6_HDR(pt);
  const bool tcp = l4 == RTE_PTYPE_L4_TCP;
  const bool udp = l4 == RTE_PTYPE_L4_UDP;
  // The checksum and segmentation code need every header in the first
  // segment; a PMD with mergeable buffers of 2 KiB always puts them there.
  const uint32_t hdr = static_cast<uint32_t>(lens.l2_len) + lens.l3_len + lens.l4_len;
  // (rte_net_hdr_lens are 8-bit except l3_len; the mbuf's l2_len field is 7 bits.)
  if ((!v4 && !v6) || (!tcp && !udp) || hdr > m->data_len || lens.l2_len > 127 || lens.l3_len > 511) return false;
  if (gso && (!tcp || m->tso_segsz == 0 || m->pkt_len <= hdr)) return false;
  uint64_t nf = (f & ~(kTxMetaMask | kRxMetaMask)) | (v4 ? RTE_MBUF_F_TX_IPV4 : RTE_MBUF_F_TX_IPV6) |
                (tcp ? RTE_MBUF_F_TX_TCP_CKSUM : RTE_MBUF_F_TX_UDP_CKSUM);
  // A GSO packet's IPv4 header checksum is valid for the whole packet; each
  // segment made of it needs its own (PacketMeta: kSegment implies it).
  if (gso) nf |= RTE_MBUF_F_TX_TCP_SEG | (v4 ? RTE_MBUF_F_TX_IP_CKSUM : 0);
  m->ol_flags = nf;
  m->packet_type = pt;
  m->l2_len = lens.l2_len;
  m->l3_len = lens.l3_len;
  m->l4_len = lens.l4_len;
  if (!gso) {
    m->tso_segsz = 0;
    return true;
  }
  // The TCP field in Linux's CHECKSUM_PARTIAL form for a GSO packet, the
  // pseudo-header sum with the whole L4 length (what tcp_v4_send_check
  // writes and netfront's segmentation adjusts from), whichever form the
  // sender used: DPDK's vhost library writes it without the length.
  offload::L3View v;
  if (!head_writable(m) || !l3_view(m, v)) return false;
  const uint16_t ph = offload::pseudo_sum(v, offload::kProtoTcp, v.l4_len);
  std::memcpy(rte_pktmbuf_mtod_offset(m, uint8_t*, v.l4_off + 16), &ph, 2);
  return true;
}

namespace {

// ------------------------------------------------------------ coalescing

bool sum_of_mbuf(const void* ctx, uint32_t off, uint32_t len, uint16_t& out) noexcept {
  return raw_sum(static_cast<const rte_mbuf*>(ctx), off, len, out);
}

offload::CsumState csum_state(uint64_t f, uint64_t mask, uint64_t good, uint64_t bad, uint64_t none) noexcept {
  const uint64_t v = f & mask;
  if (v == good) return offload::CsumState::kGood;
  if (v == bad) return offload::CsumState::kBad;
  if (v == none) return offload::CsumState::kNone;
  return offload::CsumState::kUnknown;
}

// One received frame as offload::gro_classify sees it: DPDK's header
// parser's lengths, the buffer's ownership and the port's checksum bits.
// An eligible frame gets its lengths (and a checked checksum) recorded.
offload::GroFrame gro_classify(rte_mbuf* m) noexcept {
  rte_net_hdr_lens lens{};
  const uint32_t pt = rte_net_get_ptype(m, &lens, RTE_PTYPE_L2_MASK | RTE_PTYPE_L3_MASK | RTE_PTYPE_L4_MASK);
  offload::GroProbe p;
  p.head = rte_pktmbuf_mtod(m, uint8_t*);
  p.head_len = m->data_len;
  p.pkt_len = m->pkt_len;
  p.segments = m->nb_segs;
  p.ipv4 = RTE_ETH_IS_IPV4_HDR(pt);
  p.ipv4_fragment = (pt & RTE_PTYPE_L4_MASK) == RTE_PTYPE_L4_FRAG;
  p.tcp = (pt & RTE_PTYPE_L4_MASK) == RTE_PTYPE_L4_TCP;
  p.l2_len = lens.l2_len;
  p.l3_len = lens.l3_len;
  p.l4_len = lens.l4_len;
  p.offload_pending =
      (m->ol_flags & (RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_L4_MASK | RTE_MBUF_F_TX_IP_CKSUM | RTE_MBUF_F_RX_LRO)) != 0;
  p.writable = head_writable(m);
  for (const rte_mbuf* s = m->next; s != nullptr && p.writable; s = s->next) {
    if (rte_mbuf_refcnt_read(s) != 1) p.writable = false;
  }
  p.ip_csum = csum_state(m->ol_flags, RTE_MBUF_F_RX_IP_CKSUM_MASK, RTE_MBUF_F_RX_IP_CKSUM_GOOD,
                         RTE_MBUF_F_RX_IP_CKSUM_BAD, RTE_MBUF_F_RX_IP_CKSUM_NONE);
  p.l4_csum = csum_state(m->ol_flags, RTE_MBUF_F_RX_L4_CKSUM_MASK, RTE_MBUF_F_RX_L4_CKSUM_GOOD,
                         RTE_MBUF_F_RX_L4_CKSUM_BAD, RTE_MBUF_F_RX_L4_CKSUM_NONE);
  p.sum = &sum_of_mbuf;
  p.sum_ctx = m;
  const offload::GroFrame f = offload::gro_classify(p);
  if (f.eligible) {
    if (f.l4_verified) m->ol_flags = (m->ol_flags & ~RTE_MBUF_F_RX_L4_CKSUM_MASK) | RTE_MBUF_F_RX_L4_CKSUM_GOOD;
    m->l2_len = lens.l2_len;
    m->l3_len = lens.l3_len;
    m->l4_len = lens.l4_len;
    m->packet_type = pt;
  }
  return f;
}

// A merged packet's metadata and checksum field; false if it does not
// describe itself (then it is passed on as the library left it).
bool gro_finish(rte_mbuf* m, uint16_t mss, bool psh) noexcept {
  uint8_t* ip = rte_pktmbuf_mtod_offset(m, uint8_t*, m->l2_len);
  uint8_t* tcp = ip + m->l3_len;
  if (psh) tcp[13] = static_cast<uint8_t>(tcp[13] | RTE_TCP_PSH_FLAG);
  m->ol_flags = (m->ol_flags & ~(kTxMetaMask | kRxMetaMask)) | RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM |
                RTE_MBUF_F_TX_TCP_CKSUM | RTE_MBUF_F_TX_TCP_SEG;
  m->tso_segsz = mss;
  // The IPv4 header checksum is recomputed by whoever delivers it (the
  // pending bit); the TCP one is left to the receiver (Linux's
  // CHECKSUM_PARTIAL form, which a guest's GSO or checksum code expects).
  offload::L3View v;
  if (!l3_view(m, v)) {
    m->ol_flags &= ~kTxMetaMask;
    m->tso_segsz = 0;
    return false;
  }
  const uint16_t ph = offload::pseudo_sum(v, offload::kProtoTcp, v.l4_len);
  std::memcpy(tcp + 16, &ph, 2);
  return true;
}

}  // namespace

}  // namespace dpdk_detail

// ---------------------------------------------------------------- pkt::

namespace pkt {

using dpdk_detail::g_hash_l4_flag;
using dpdk_detail::hw_checksum_prepare;
using dpdk_detail::kRxMetaMask;
using dpdk_detail::kTxMetaMask;
using dpdk_detail::mb;
using dpdk_detail::pb;
using dpdk_detail::sw_checksums;

void free(PacketBuf* p) noexcept { rte_pktmbuf_free(mb(p)); }

void free_bulk(std::span<PacketBuf* const> ps) noexcept {
  if (ps.empty() || ps.size() > UINT_MAX) return;
  rte_pktmbuf_free_bulk(const_cast<rte_mbuf**>(reinterpret_cast<rte_mbuf* const*>(ps.data())),
                        static_cast<unsigned>(ps.size()));
}

uint32_t length(const PacketBuf* p) noexcept { return mb(p)->pkt_len; }
uint16_t segment_count(const PacketBuf* p) noexcept { return mb(p)->nb_segs; }

size_t segments(const PacketBuf* p, std::span<PacketSegment> out) noexcept {
  size_t n = 0;
  for (const rte_mbuf* s = mb(p); s != nullptr && n < out.size(); s = s->next) {
    out[n++] = {rte_pktmbuf_mtod(s, const std::byte*), s->data_len};
  }
  return n;
}

size_t copy_out(const PacketBuf* p, size_t offset, std::span<std::byte> out) noexcept {
  size_t copied = 0;
  for (const rte_mbuf* s = mb(p); s != nullptr && copied < out.size(); s = s->next) {
    if (offset >= s->data_len) {
      offset -= s->data_len;
      continue;
    }
    const size_t n = std::min<size_t>(s->data_len - offset, out.size() - copied);
    std::memcpy(out.data() + copied, rte_pktmbuf_mtod_offset(s, const std::byte*, offset), n);
    copied += n;
    offset = 0;
  }
  return copied;
}

std::span<std::byte> append_room(PacketBuf* p, size_t len) noexcept {
  rte_mbuf* m = mb(p);
  const rte_mbuf* last = rte_pktmbuf_lastseg(m);
  if (!RTE_MBUF_DIRECT(last) || rte_mbuf_refcnt_read(last) != 1 || len > UINT16_MAX) return {};
  char* room = rte_pktmbuf_append(m, static_cast<uint16_t>(len));
  if (room == nullptr) return {};
  return {reinterpret_cast<std::byte*>(room), len};
}

size_t tailroom(const PacketBuf* p) noexcept {
  const rte_mbuf* last = rte_pktmbuf_lastseg(const_cast<rte_mbuf*>(mb(p)));
  if (!RTE_MBUF_DIRECT(last) || rte_mbuf_refcnt_read(last) != 1) return 0;
  return rte_pktmbuf_tailroom(last);
}

bool trim(PacketBuf* p, size_t len) noexcept {
  rte_mbuf* m = mb(p);
  if (len > m->pkt_len) return false;
  const uint32_t keep = m->pkt_len - static_cast<uint32_t>(len);
  uint32_t seen = 0;
  uint16_t segs = 0;
  for (rte_mbuf* s = m; s != nullptr; s = s->next) {
    ++segs;
    if (seen + s->data_len >= keep || s->next == nullptr) {
      s->data_len = static_cast<uint16_t>(keep - seen);
      rte_pktmbuf_free(s->next);
      s->next = nullptr;
      break;
    }
    seen += s->data_len;
  }
  m->pkt_len = keep;
  m->nb_segs = segs;
  return true;
}

PacketMeta meta(const PacketBuf* p) noexcept {
  const rte_mbuf* m = mb(p);
  const uint64_t f = m->ol_flags;
  const uint32_t pt = m->packet_type;
  PacketMeta r;
  r.l2_len = m->l2_len;
  r.l3_len = m->l3_len;
  r.l4_len = m->l4_len;
  if ((f & RTE_MBUF_F_TX_IPV4) != 0 || RTE_ETH_IS_IPV4_HDR(pt)) r.flags |= PacketMeta::kIpv4;
  else if ((f & RTE_MBUF_F_TX_IPV6) != 0 || RTE_ETH_IS_IPV6_HDR(pt)) r.flags |= PacketMeta::kIpv6;
  const uint64_t l4 = f & RTE_MBUF_F_TX_L4_MASK;
  if ((pt & RTE_PTYPE_L4_MASK) == RTE_PTYPE_L4_TCP || l4 == RTE_MBUF_F_TX_TCP_CKSUM ||
      (f & RTE_MBUF_F_TX_TCP_SEG) != 0) {
    r.flags |= PacketMeta::kTcp;
  } else if ((pt & RTE_PTYPE_L4_MASK) == RTE_PTYPE_L4_UDP || l4 == RTE_MBUF_F_TX_UDP_CKSUM) {
    r.flags |= PacketMeta::kUdp;
  }
  if ((f & RTE_MBUF_F_TX_IP_CKSUM) != 0) r.flags |= PacketMeta::kIpCsumPending;
  if (l4 == RTE_MBUF_F_TX_TCP_CKSUM || l4 == RTE_MBUF_F_TX_UDP_CKSUM) r.flags |= PacketMeta::kL4CsumPending;
  if ((f & RTE_MBUF_F_TX_TCP_SEG) != 0 || (f & RTE_MBUF_F_RX_LRO) != 0) {
    r.flags |= PacketMeta::kSegment;
    r.mss = m->tso_segsz;
  }
  if ((f & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_GOOD) r.flags |= PacketMeta::kL4CsumVerified;
  if ((f & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_BAD) r.flags |= PacketMeta::kL4CsumBad;
  if ((f & RTE_MBUF_F_RX_IP_CKSUM_MASK) == RTE_MBUF_F_RX_IP_CKSUM_BAD) r.flags |= PacketMeta::kIpCsumBad;
  if ((f & RTE_MBUF_F_RX_RSS_HASH) != 0) {
    const uint64_t l4 = g_hash_l4_flag.load(std::memory_order_relaxed);
    r.hash = m->hash.rss;
    r.hash_type = (l4 != 0 && (f & l4) != 0) ? PacketMeta::kHashL4 : PacketMeta::kHashL3;
  }
  return r;
}

bool set_meta(PacketBuf* p, const PacketMeta& in) noexcept {
  rte_mbuf* m = mb(p);
  const bool v4 = in.has(PacketMeta::kIpv4);
  const bool v6 = in.has(PacketMeta::kIpv6);
  const bool tcp = in.has(PacketMeta::kTcp);
  const bool udp = in.has(PacketMeta::kUdp);
  const bool seg = in.has(PacketMeta::kSegment);
  // Segmentation implies both checksums: every segment gets new ones.
  const bool l4_pending = in.has(PacketMeta::kL4CsumPending) || seg;
  const bool ip_pending = in.has(PacketMeta::kIpCsumPending) || (seg && v4);
  if ((v4 && v6) || (tcp && udp) || in.l2_len > 127 || in.l3_len > 511 || in.l4_len > 255) return false;
  if (seg && (!tcp || (!v4 && !v6) || in.mss == 0)) return false;
  if (l4_pending && (!(tcp || udp) || (!v4 && !v6))) return false;
  if (ip_pending && !v4) return false;
  if (in.hash_type > PacketMeta::kHashL4) return false;

  const uint64_t hash_l4 = g_hash_l4_flag.load(std::memory_order_relaxed);
  uint64_t f = m->ol_flags & ~(kTxMetaMask | kRxMetaMask | RTE_MBUF_F_RX_RSS_HASH | hash_l4);
  if (in.hash_type != PacketMeta::kHashNone) {
    f |= RTE_MBUF_F_RX_RSS_HASH;
    if (in.hash_type == PacketMeta::kHashL4) f |= hash_l4;
    m->hash.rss = in.hash;
  }
  uint32_t pt = RTE_PTYPE_L2_ETHER;
  if (v4) {
    f |= RTE_MBUF_F_TX_IPV4;
    pt |= RTE_PTYPE_L3_IPV4_EXT_UNKNOWN;
  }
  if (v6) {
    f |= RTE_MBUF_F_TX_IPV6;
    pt |= RTE_PTYPE_L3_IPV6_EXT_UNKNOWN;
  }
  if (tcp) pt |= RTE_PTYPE_L4_TCP;
  if (udp) pt |= RTE_PTYPE_L4_UDP;
  if (ip_pending) f |= RTE_MBUF_F_TX_IP_CKSUM;
  if (l4_pending) f |= tcp ? RTE_MBUF_F_TX_TCP_CKSUM : RTE_MBUF_F_TX_UDP_CKSUM;
  if (seg) f |= RTE_MBUF_F_TX_TCP_SEG;
  if (in.has(PacketMeta::kL4CsumVerified)) f |= RTE_MBUF_F_RX_L4_CKSUM_GOOD;
  else if (in.has(PacketMeta::kL4CsumBad)) f |= RTE_MBUF_F_RX_L4_CKSUM_BAD;
  if (in.has(PacketMeta::kIpCsumBad)) f |= RTE_MBUF_F_RX_IP_CKSUM_BAD;
  m->ol_flags = f;
  m->packet_type = pt;
  m->l2_len = in.l2_len;
  m->l3_len = in.l3_len;
  m->l4_len = in.l4_len;
  m->tso_segsz = seg ? in.mss : 0;
  return true;
}

bool parse_headers(PacketBuf* p, PacketMeta& out) noexcept {
  rte_mbuf* m = mb(p);
  rte_net_hdr_lens lens{};
  const uint32_t pt = rte_net_get_ptype(m, &lens, RTE_PTYPE_L2_MASK | RTE_PTYPE_L3_MASK | RTE_PTYPE_L4_MASK);
  const uint32_t l4 = pt & RTE_PTYPE_L4_MASK;
  const bool v4 = RTE_ETH_IS_IPV4_HDR(pt);
  const bool v6 = RTE_ETH_IS_IPV6_HDR(pt);
  if ((!v4 && !v6) || (l4 != RTE_PTYPE_L4_TCP && l4 != RTE_PTYPE_L4_UDP)) return false;
  if (static_cast<uint32_t>(lens.l2_len) + lens.l3_len + lens.l4_len > m->data_len) return false;
  if (lens.l2_len > 127 || lens.l3_len > 511) return false;
  out.flags &= ~(PacketMeta::kIpv4 | PacketMeta::kIpv6 | PacketMeta::kTcp | PacketMeta::kUdp);
  out.flags |=
      (v4 ? PacketMeta::kIpv4 : PacketMeta::kIpv6) | (l4 == RTE_PTYPE_L4_TCP ? PacketMeta::kTcp : PacketMeta::kUdp);
  out.l2_len = lens.l2_len;
  out.l3_len = lens.l3_len;
  out.l4_len = lens.l4_len;
  return true;
}

bool pull_up(PacketBuf* p, size_t len) noexcept {
  rte_mbuf* m = mb(p);
  len = std::min<size_t>(len, m->pkt_len);
  if (m->data_len >= len) return true;
  if (!RTE_MBUF_DIRECT(m) || rte_mbuf_refcnt_read(m) != 1 || rte_pktmbuf_tailroom(m) < len - m->data_len) {
    return false;
  }
  auto* dst = rte_pktmbuf_mtod_offset(m, uint8_t*, m->data_len);
  size_t need = len - m->data_len;
  while (need > 0) {
    rte_mbuf* s = m->next;
    // A segment shared with another packet (a clone) must not be trimmed.
    if (s == nullptr || rte_mbuf_refcnt_read(s) != 1) return false;
    const size_t n = std::min<size_t>(need, s->data_len);
    std::memcpy(dst, rte_pktmbuf_mtod(s, const uint8_t*), n);
    dst += n;
    need -= n;
    m->data_len = static_cast<uint16_t>(m->data_len + n);
    s->data_off = static_cast<uint16_t>(s->data_off + n);
    s->data_len = static_cast<uint16_t>(s->data_len - n);
    if (s->data_len == 0) {
      m->next = s->next;
      s->next = nullptr;
      s->nb_segs = 1;
      s->pkt_len = 0;
      m->nb_segs = static_cast<uint16_t>(m->nb_segs - 1);
      rte_pktmbuf_free_seg(s);
    }
  }
  return true;
}

bool complete_checksums(PacketBuf* p, bool l4) noexcept { return sw_checksums(mb(p), true, l4); }

bool prepare_partial_checksum(PacketBuf* p) noexcept {
  rte_mbuf* m = mb(p);
  if ((m->ol_flags & RTE_MBUF_F_TX_L4_MASK) == 0 || (m->ol_flags & RTE_MBUF_F_TX_TCP_SEG) != 0) return false;
  return hw_checksum_prepare(m, false, true);
}

size_t coalesce_tcp(std::span<PacketBuf*> pkts, const CoalesceOptions& opts, CoalesceStats* stats) noexcept {
  size_t out_n = 0;
  for (size_t base = 0; base < pkts.size(); base += offload::kGroBurstMax) {
    const uint32_t n = static_cast<uint32_t>(std::min(pkts.size() - base, offload::kGroBurstMax));
    offload::GroFrame fr[offload::kGroBurstMax];
    rte_mbuf* in[offload::kGroBurstMax];
    for (uint32_t i = 0; i < n; ++i) {
      in[i] = mb(pkts[base + i]);
      fr[i] = dpdk_detail::gro_classify(in[i]);
    }
    offload::GroPlan plan;
    offload::gro_plan({fr, n}, opts, plan);
    // Each group in the place of its first frame.
    for (uint32_t i = 0; i < n; ++i) {
      const offload::GroGroup& g = plan.groups[plan.group_of[i]];
      if (g.first != i) continue;
      if (g.frames == 1) {
        pkts[out_n++] = pb(in[i]);
        continue;
      }
      rte_mbuf* ms[offload::kGroBurstMax];
      uint32_t k = 0;
      for (uint32_t j = i; j < n; j = plan.next_in[j]) {
        // The library only takes ACK; PSH goes back on the merged header.
        if (fr[j].psh) fr[j].tcp[13] = RTE_TCP_ACK_FLAG;
        ms[k++] = in[j];
      }
      rte_gro_param param{};
      param.gro_types = RTE_GRO_TCP_IPV4;
      param.max_flow_num = 1;
      param.max_item_per_flow = static_cast<uint16_t>(k);
      const uint16_t got = rte_gro_reassemble_burst(ms, static_cast<uint16_t>(k), &param);
      // One flow, in sequence, within the length bound: the library merges
      // it whole unless it disagrees on something checked in the plan (then
      // its items come back in sequence order, the later ones unmerged or in
      // shorter runs).
      for (uint16_t j = 0; j < got; ++j) {
        rte_mbuf* m = ms[j];
        const bool last = j + 1 == got;
        const uint32_t payload = m->pkt_len - (static_cast<uint32_t>(m->l2_len) + m->l3_len + m->l4_len);
        if (payload > g.mss) {
          if (dpdk_detail::gro_finish(m, g.mss, last && g.psh)) {
            if (stats != nullptr) {
              ++stats->merged_packets;
              stats->merged_frames += (payload + g.mss - 1) / g.mss;
            }
          }
        } else {
          if (last && g.psh) {
            uint8_t* tcp = rte_pktmbuf_mtod_offset(m, uint8_t*, m->l2_len + m->l3_len);
            tcp[13] = static_cast<uint8_t>(tcp[13] | RTE_TCP_PSH_FLAG);
          }
        }
        pkts[out_n++] = pb(m);
      }
    }
  }
  return out_n;
}

}  // namespace pkt

std::string MacAddr::str() const {
  char buf[18];
  std::snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", bytes[0], bytes[1], bytes[2], bytes[3], bytes[4],
                bytes[5]);
  return buf;
}

}  // namespace xenpath
