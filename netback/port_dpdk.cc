// The DPDK adapter (see port_dpdk.h). The only translation unit of the
// project that includes rte_*.h.
//
// A PacketBuf* is an rte_mbuf* (the head of a chain); the reinterpret_casts
// below only ever round-trip that pointer.
#include "netback/port_dpdk.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <rte_bus.h>
#include <rte_byteorder.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_gro.h>
#include <rte_gso.h>
#include <rte_ip.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_mempool.h>
#include <rte_net.h>
#include <rte_ring.h>
#include <rte_tcp.h>
#include <rte_udp.h>
#include <rte_version.h>

#include "common/log.h"
#include "common/stats.h"

namespace xenpath {

static_assert(sizeof(rte_mbuf_ext_shared_info) <= sizeof(ExtBufShared::storage));
static_assert(alignof(rte_mbuf_ext_shared_info) <= alignof(ExtBufShared));

namespace {

rte_mbuf* mb(PacketBuf* p) noexcept { return reinterpret_cast<rte_mbuf*>(p); }
const rte_mbuf* mb(const PacketBuf* p) noexcept { return reinterpret_cast<const rte_mbuf*>(p); }
PacketBuf* pb(rte_mbuf* m) noexcept { return reinterpret_cast<PacketBuf*>(m); }

constexpr uint64_t kTxMetaMask = RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IPV6 | RTE_MBUF_F_TX_IP_CKSUM |
                                 RTE_MBUF_F_TX_L4_MASK | RTE_MBUF_F_TX_TCP_SEG;
constexpr uint64_t kRxMetaMask =
    RTE_MBUF_F_RX_L4_CKSUM_MASK | RTE_MBUF_F_RX_IP_CKSUM_MASK | RTE_MBUF_F_RX_LRO;
// PacketMeta::kHashL4 rides in a dynamic mbuf flag (registered once by
// DpdkEnv::init; 0 when that failed, and L4 hashes then read back as L3,
// which is what a consumer may always assume of an L4 hash). The hash
// itself is an RSS hash (RTE_MBUF_F_RX_RSS_HASH, hash.rss): what an mbuf
// peer such as net_ring passes through untouched and what a NIC's receive
// fills in.
std::atomic<uint64_t> g_hash_l4_flag{0};
constexpr const char* kHashL4FlagName = "xenpath_dynflag_hash_l4";

constexpr uint8_t kTcpFlagFin = 0x01;
constexpr uint8_t kTcpFlagPsh = 0x08;
constexpr uint8_t kTcpFlagCwr = 0x80;
constexpr uint16_t kIpv6HeaderLen = 40;

uint16_t load_be16(const uint8_t* p) noexcept { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
void store_be16(uint8_t* p, uint16_t v) noexcept {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
uint32_t load_be32(const uint8_t* p) noexcept {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | p[3];
}
void store_be32(uint8_t* p, uint32_t v) noexcept {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

uint16_t fold(uint32_t sum) noexcept {
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

// One's-complement sum (folded, not complemented, native order as
// rte_raw_cksum returns it) of packet bytes [off, off + len). Not DPDK
// 22.11's rte_raw_cksum_mbuf: it truncates a segment's 32-bit partial sum
// to 16 bits before byte-swapping a segment that starts at an odd offset,
// which corrupts checksums over odd-length guest fragments.
bool raw_sum(const rte_mbuf* m, uint32_t off, uint32_t len, uint16_t& out) noexcept {
  if (static_cast<uint64_t>(off) + len > m->pkt_len) return false;
  const rte_mbuf* s = m;
  while (s != nullptr && off >= s->data_len) {
    off -= s->data_len;
    s = s->next;
  }
  uint32_t sum = 0;
  uint32_t done = 0;
  while (done < len) {
    if (s == nullptr) return false;
    const uint32_t n = std::min<uint32_t>(s->data_len - off, len - done);
    uint16_t part = rte_raw_cksum(rte_pktmbuf_mtod_offset(s, const void*, off), n);
    if ((done & 1) != 0) part = rte_bswap16(part);  // this piece starts mid-word
    sum += part;
    done += n;
    off = 0;
    s = s->next;
  }
  out = fold(sum);
  return true;
}

// The first segment may be written only when we own its bytes alone: not
// external (a guest page), not indirect, not shared with a clone.
bool head_writable(const rte_mbuf* m) noexcept {
  return RTE_MBUF_DIRECT(m) && rte_mbuf_refcnt_read(m) == 1;
}

// The checksum-relevant view of a packet's IP header, validated against the
// metadata and the packet length.
struct L3View {
  uint8_t* ip = nullptr;
  bool v4 = false;
  uint32_t l4_off = 0;  // from the start of the packet
  uint32_t l4_len = 0;  // L4 header + payload, per the IP length fields
};

bool l3_view(rte_mbuf* m, L3View& v) noexcept {
  const uint64_t f = m->ol_flags;
  const uint32_t l2 = m->l2_len;
  const uint32_t l3 = m->l3_len;
  if (l2 + l3 > m->data_len) return false;
  v.ip = rte_pktmbuf_mtod_offset(m, uint8_t*, l2);
  v.l4_off = l2 + l3;
  if ((f & RTE_MBUF_F_TX_IPV4) != 0) {
    if ((v.ip[0] >> 4) != 4 || (v.ip[0] & 0xf) * 4u != l3 || l3 < 20) return false;
    const uint32_t total = load_be16(v.ip + 2);
    if (total < l3 || l2 + total > m->pkt_len) return false;
    v.v4 = true;
    v.l4_len = total - l3;
    return true;
  }
  if ((f & RTE_MBUF_F_TX_IPV6) != 0) {
    if ((v.ip[0] >> 4) != 6 || l3 < kIpv6HeaderLen) return false;
    const uint32_t payload = load_be16(v.ip + 4);
    const uint32_t ext = l3 - kIpv6HeaderLen;
    if (payload < ext || l2 + kIpv6HeaderLen + payload > m->pkt_len) return false;
    v.v4 = false;
    v.l4_len = payload - ext;
    return true;
  }
  return false;
}

// One's-complement sum of the TCP/UDP pseudo header, not complemented (the
// form DPDK wants in the checksum field for hardware offload, and the start
// of a software checksum). `len` 0 for TSO, as DPDK's convention requires.
uint16_t pseudo_sum(const L3View& v, uint8_t proto, uint32_t len) noexcept {
  uint32_t sum = 0;
  const uint8_t* addrs = v.v4 ? v.ip + 12 : v.ip + 8;
  const size_t addr_bytes = v.v4 ? 8 : 32;
  for (size_t i = 0; i < addr_bytes; i += 2) sum += load_be16(addrs + i);
  sum += proto;
  sum += len & 0xffff;
  sum += len >> 16;
  // Sum in host order; the field is stored in network order.
  return rte_cpu_to_be_16(fold(sum));
}

uint8_t l4_proto(uint64_t f) noexcept {
  return (f & RTE_MBUF_F_TX_L4_MASK) == RTE_MBUF_F_TX_UDP_CKSUM ? IPPROTO_UDP : IPPROTO_TCP;
}
uint32_t csum_field_off(uint8_t proto) noexcept { return proto == IPPROTO_UDP ? 6 : 16; }

// Software checksums for the pending TX bits; clears them.
bool sw_checksums(rte_mbuf* m, bool do_ip, bool do_l4) noexcept {
  const uint64_t f = m->ol_flags;
  do_ip = do_ip && (f & RTE_MBUF_F_TX_IP_CKSUM) != 0;
  const bool l4_pending = (f & RTE_MBUF_F_TX_L4_MASK) == RTE_MBUF_F_TX_TCP_CKSUM ||
                          (f & RTE_MBUF_F_TX_L4_MASK) == RTE_MBUF_F_TX_UDP_CKSUM;
  do_l4 = do_l4 && l4_pending;
  if (!do_ip && !do_l4) return true;
  if (!head_writable(m)) return false;
  L3View v;
  if (!l3_view(m, v)) return false;
  if (do_ip && !v.v4) return false;
  const uint8_t proto = l4_proto(f);
  const uint32_t field = v.l4_off + csum_field_off(proto);
  if (do_l4 && (field + 2 > m->data_len || v.l4_len < csum_field_off(proto) + 2)) return false;
  if (do_ip) {
    store_be16(v.ip + 10, 0);
    // rte_ipv4_cksum returns the value to store as-is (network order).
    const uint16_t c = rte_ipv4_cksum(reinterpret_cast<const rte_ipv4_hdr*>(v.ip));
    std::memcpy(v.ip + 10, &c, 2);
    m->ol_flags &= ~RTE_MBUF_F_TX_IP_CKSUM;
  }
  if (do_l4) {
    uint8_t* fp = rte_pktmbuf_mtod_offset(m, uint8_t*, field);
    store_be16(fp, 0);
    uint16_t raw = 0;
    if (!raw_sum(m, v.l4_off, v.l4_len, raw)) return false;
    const uint16_t ph = pseudo_sum(v, proto, v.l4_len);
    uint16_t c = static_cast<uint16_t>(~fold(static_cast<uint32_t>(raw) + ph));
    if (c == 0 && proto == IPPROTO_UDP) c = 0xffff;  // RFC 768: 0 means "no checksum"
    std::memcpy(fp, &c, 2);
    m->ol_flags &= ~RTE_MBUF_F_TX_L4_MASK;
  }
  return true;
}

// Hardware offload wants the IPv4 checksum zeroed and the pseudo-header sum
// (without length for TSO) in the L4 field. We write it ourselves: a guest's
// partial checksum follows Linux's convention (with length), not DPDK's.
bool hw_checksum_prepare(rte_mbuf* m, bool ip, bool l4) noexcept {
  const uint64_t f = m->ol_flags;
  const bool tso = (f & RTE_MBUF_F_TX_TCP_SEG) != 0;
  ip = ip && (f & RTE_MBUF_F_TX_IP_CKSUM) != 0;
  l4 = l4 && (tso || (f & RTE_MBUF_F_TX_L4_MASK) != 0);
  if (!ip && !l4) return true;
  if (!head_writable(m)) return false;
  L3View v;
  if (!l3_view(m, v)) return false;
  if (ip) store_be16(v.ip + 10, 0);
  if (l4) {
    const uint8_t proto = tso ? static_cast<uint8_t>(IPPROTO_TCP) : l4_proto(f);
    const uint32_t field = v.l4_off + csum_field_off(proto);
    if (field + 2 > m->data_len) return false;
    const uint16_t ph = pseudo_sum(v, proto, tso ? 0 : v.l4_len);
    std::memcpy(rte_pktmbuf_mtod_offset(m, uint8_t*, field), &ph, 2);
  }
  return true;
}

// Linux's GSO rules for the TCP flags of segment i of n: FIN and PSH only on
// the last, CWR only on the first.
void fix_tcp_flags(rte_mbuf* seg, uint32_t tcp_off, size_t i, size_t n) noexcept {
  uint8_t* flags = rte_pktmbuf_mtod_offset(seg, uint8_t*, tcp_off + 13);
  if (i + 1 < n) *flags = static_cast<uint8_t>(*flags & ~(kTcpFlagFin | kTcpFlagPsh));
  if (i > 0) *flags = static_cast<uint8_t>(*flags & ~kTcpFlagCwr);
}

// TCP/IPv6 segmentation (librte_gso of DPDK 22.11 only does IPv4): each
// segment is a copy of the headers in a direct buffer followed by indirect
// buffers referencing the input's payload, the layout librte_gso produces.
int segment_tcp6(rte_mbuf* pkt, uint16_t mss, rte_mempool* direct, rte_mempool* indirect,
                 rte_mbuf** out, size_t n_out) noexcept {
  const uint32_t hdr = static_cast<uint32_t>(pkt->l2_len) + pkt->l3_len + pkt->l4_len;
  const uint32_t total = pkt->pkt_len - hdr;
  const size_t n = (total + mss - 1) / mss;
  if (n > n_out) return -EINVAL;
  const uint8_t* h = rte_pktmbuf_mtod(pkt, const uint8_t*);
  const uint32_t l3_off = pkt->l2_len;
  const uint32_t tcp_off = l3_off + pkt->l3_len;
  const uint32_t seq0 = load_be32(h + tcp_off + 4);

  const rte_mbuf* in = pkt;
  uint32_t in_off = hdr;
  auto skip_consumed = [&]() {
    while (in != nullptr && in_off >= in->data_len) {
      in_off -= in->data_len;
      in = in->next;
    }
  };
  skip_consumed();
  uint32_t done = 0;
  for (size_t i = 0; i < n; ++i) {
    rte_mbuf* seg = rte_pktmbuf_alloc(direct);
    if (seg == nullptr) {
      for (size_t k = 0; k < i; ++k) rte_pktmbuf_free(out[k]);
      return -ENOMEM;
    }
    std::memcpy(rte_pktmbuf_mtod(seg, uint8_t*), h, hdr);
    seg->data_len = static_cast<uint16_t>(hdr);
    seg->pkt_len = hdr;
    seg->ol_flags = pkt->ol_flags & ~RTE_MBUF_F_TX_TCP_SEG;
    seg->tx_offload = pkt->tx_offload;
    seg->packet_type = pkt->packet_type;
    seg->port = pkt->port;
    const uint32_t len = std::min<uint32_t>(mss, total - done);
    uint32_t remaining = len;
    rte_mbuf* prev = seg;
    while (remaining > 0 && in != nullptr) {
      const uint32_t take = std::min<uint32_t>(remaining, in->data_len - in_off);
      rte_mbuf* ref = rte_pktmbuf_alloc(indirect);
      if (ref == nullptr) {
        rte_pktmbuf_free(seg);
        for (size_t k = 0; k < i; ++k) rte_pktmbuf_free(out[k]);
        return -ENOMEM;
      }
      rte_pktmbuf_attach(ref, const_cast<rte_mbuf*>(in));
      ref->data_off = static_cast<uint16_t>(in->data_off + in_off);
      ref->data_len = static_cast<uint16_t>(take);
      prev->next = ref;
      prev = ref;
      seg->nb_segs++;
      seg->pkt_len += take;
      in_off += take;
      remaining -= take;
      skip_consumed();
    }
    uint8_t* sh = rte_pktmbuf_mtod(seg, uint8_t*);
    store_be16(sh + l3_off + 4, static_cast<uint16_t>(pkt->l3_len - kIpv6HeaderLen + pkt->l4_len + len));
    store_be32(sh + tcp_off + 4, seq0 + done);
    fix_tcp_flags(seg, tcp_off, i, n);
    done += len;
    out[i] = seg;
  }
  return static_cast<int>(n);
}


// ------------------------------------------------------------ coalescing
//
// librte_gro does the chaining (merge_two_tcp4_packets: the tail frame's
// headers stripped with rte_pktmbuf_adj, the chains linked, the IPv4 total
// length rewritten), but by itself it is not safe to hand a burst: it
// checks no checksum, not TTL/TOS/window, merges a frame that arrived late
// in front of an earlier one, and returns every merged packet before every
// frame it did not take, so a flow's PSH or FIN frame can overtake the
// segments around it. So the burst is first cut here into groups, each
// the in-sequence run of one flow that Linux GRO would merge, and the
// library only ever sees one group at a time: one flow, every frame the
// next one in sequence, bounded so no merge fails for length.

constexpr size_t kGroBurstMax = 64;

struct GroFrame {
  rte_mbuf* m = nullptr;
  uint8_t* ip = nullptr;
  uint8_t* tcp = nullptr;
  uint32_t seq = 0;
  uint32_t payload = 0;
  uint16_t ip_id = 0;
  bool eligible = false;  // may join a group
  bool psh = false;       // ACK|PSH: joins, then ends its group
  bool barrier = false;   // an IPv4 fragment, or TCP/IPv4 whose headers cannot be read: ends every group
};

struct GroGroup {
  uint32_t first = 0;      // burst index of the first frame
  uint32_t last = 0;       // burst index of the latest frame
  uint32_t frames = 0;
  uint32_t next_seq = 0;
  uint32_t ip_len = 0;     // IPv4 total length once merged
  uint32_t segs = 0;       // mbufs once merged
  uint16_t mss = 0;
  uint16_t next_ip_id = 0;
  bool open = true;
  bool psh = false;
};

// Where a frame's TCP/IPv4 headers are, and whether it may be merged.
void gro_classify(GroFrame& f) noexcept {
  rte_mbuf* m = f.m;
  rte_net_hdr_lens lens{};
  const uint32_t pt = rte_net_get_ptype(m, &lens, RTE_PTYPE_L2_MASK | RTE_PTYPE_L3_MASK | RTE_PTYPE_L4_MASK);
  if (!RTE_ETH_IS_IPV4_HDR(pt)) return;
  if ((pt & RTE_PTYPE_L4_MASK) == RTE_PTYPE_L4_FRAG) {
    // Maybe a piece of some flow's segment: nothing may overtake it.
    f.barrier = true;
    return;
  }
  if ((pt & RTE_PTYPE_L4_MASK) != RTE_PTYPE_L4_TCP) return;
  const uint32_t hdr = static_cast<uint32_t>(lens.l2_len) + lens.l3_len + lens.l4_len;
  if (hdr > m->data_len || lens.l2_len > 127 || lens.l4_len < 20 || lens.l4_len > 60) {
    // Of some flow we cannot tell: nothing may be moved past it.
    f.barrier = true;
    return;
  }
  f.ip = rte_pktmbuf_mtod_offset(m, uint8_t*, lens.l2_len);
  f.tcp = f.ip + lens.l3_len;
  f.seq = load_be32(f.tcp + 4);
  f.ip_id = load_be16(f.ip + 4);
  // Pending transmit work (a same-process sender's metadata) is the
  // sender's to finish: such a frame's checksums are not filled in.
  if ((m->ol_flags & (RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_L4_MASK | RTE_MBUF_F_TX_IP_CKSUM |
                      RTE_MBUF_F_RX_LRO)) != 0) {
    return;
  }
  // inet_gro_receive: no IP options, no fragments; a frame padded past its
  // IP length (a runt) would merge its padding as payload.
  const uint32_t total = load_be16(f.ip + 2);
  const uint16_t frag = load_be16(f.ip + 6);
  if (lens.l3_len != 20 || (frag & 0x3fff) != 0 || lens.l2_len + total != m->pkt_len || total < 20u + lens.l4_len) {
    return;
  }
  f.payload = total - 20 - lens.l4_len;
  const uint8_t flags = f.tcp[13];
  if (f.payload == 0 || (flags != RTE_TCP_ACK_FLAG && flags != (RTE_TCP_ACK_FLAG | RTE_TCP_PSH_FLAG))) return;
  // The library rewrites the head's header and relinks the chains.
  if (!head_writable(m)) return;
  for (const rte_mbuf* s = m->next; s != nullptr; s = s->next) {
    if (rte_mbuf_refcnt_read(s) != 1) return;
  }
  // Checksums: what the port verified, else checked here as Linux's GRO
  // does (__skb_gro_checksum_complete); a bad one is never merged.
  const uint64_t ipf = m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK;
  if (ipf == RTE_MBUF_F_RX_IP_CKSUM_BAD) return;
  if (ipf != RTE_MBUF_F_RX_IP_CKSUM_GOOD && ipf != RTE_MBUF_F_RX_IP_CKSUM_NONE &&
      rte_ipv4_cksum(reinterpret_cast<const rte_ipv4_hdr*>(f.ip)) != 0) {
    return;
  }
  const uint64_t l4f = m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK;
  if (l4f == RTE_MBUF_F_RX_L4_CKSUM_BAD) return;
  if (l4f != RTE_MBUF_F_RX_L4_CKSUM_GOOD && l4f != RTE_MBUF_F_RX_L4_CKSUM_NONE) {
    L3View v{f.ip, true, static_cast<uint32_t>(lens.l2_len) + 20, total - 20u};
    uint16_t raw = 0;
    if (!raw_sum(m, v.l4_off, v.l4_len, raw)) return;
    if (fold(static_cast<uint32_t>(raw) + pseudo_sum(v, IPPROTO_TCP, v.l4_len)) != 0xffff) return;
    // Checked: the receiver need not check again (netif data_validated).
    m->ol_flags = (m->ol_flags & ~RTE_MBUF_F_RX_L4_CKSUM_MASK) | RTE_MBUF_F_RX_L4_CKSUM_GOOD;
  }
  m->l2_len = lens.l2_len;
  m->l3_len = lens.l3_len;
  m->l4_len = lens.l4_len;
  m->packet_type = pt;
  f.psh = (flags & RTE_TCP_PSH_FLAG) != 0;
  f.eligible = true;
}

bool gro_same_flow(const GroFrame& a, const GroFrame& b) noexcept {
  // Addresses and ports.
  return std::memcmp(a.ip + 12, b.ip + 12, 8) == 0 && std::memcmp(a.tcp, b.tcp, 4) == 0;
}

// Whether `f` may follow `g`'s latest frame `last` (of the same flow) in
// one merged packet: what tcp_gro_receive/inet_gro_receive compare.
bool gro_may_join(const GroGroup& g, const GroFrame& first, const GroFrame& f, const pkt::CoalesceOptions& o) noexcept {
  if (!g.open || !f.eligible || f.seq != g.next_seq || f.payload > g.mss) return false;
  const rte_mbuf* a = first.m;
  const rte_mbuf* b = f.m;
  if (a->l2_len != b->l2_len || a->l4_len != b->l4_len) return false;
  if (std::memcmp(rte_pktmbuf_mtod(a, const uint8_t*), rte_pktmbuf_mtod(b, const uint8_t*), a->l2_len) != 0) {
    return false;  // MACs, VLAN tags
  }
  if (first.ip[1] != f.ip[1] || first.ip[8] != f.ip[8]) return false;  // TOS, TTL
  const bool df = (load_be16(first.ip + 6) & 0x4000) != 0;
  if (df != ((load_be16(f.ip + 6) & 0x4000) != 0)) return false;
  // Without DF the IDs must count up (the library checks the same).
  if (!df && f.ip_id != g.next_ip_id) return false;
  // ack, data offset, window; the flags are known to be ACK (or ACK|PSH);
  // the options byte for byte.
  if (std::memcmp(first.tcp + 8, f.tcp + 8, 5) != 0 || std::memcmp(first.tcp + 14, f.tcp + 14, 2) != 0) return false;
  if (std::memcmp(first.tcp + 20, f.tcp + 20, a->l4_len - 20u) != 0) return false;
  if (a->l2_len + g.ip_len + f.payload > o.max_len) return false;
  if (g.segs + b->nb_segs > o.max_segments) return false;
  return true;
}

void gro_start(GroGroup& g, const GroFrame& f, uint32_t idx) noexcept {
  g = GroGroup{};
  g.first = g.last = idx;
  g.frames = 1;
  if (!f.eligible) {
    g.open = false;  // a group of one (another protocol, or a frame not to merge)
    return;
  }
  g.next_seq = f.seq + f.payload;
  g.ip_len = load_be16(f.ip + 2);
  g.segs = f.m->nb_segs;
  g.mss = static_cast<uint16_t>(std::min<uint32_t>(f.payload, UINT16_MAX));
  g.next_ip_id = static_cast<uint16_t>(f.ip_id + 1);
  g.open = !f.psh;
  g.psh = f.psh;
}

void gro_join(GroGroup& g, const GroFrame& f, uint32_t idx) noexcept {
  g.last = idx;
  ++g.frames;
  g.next_seq += f.payload;
  g.ip_len += f.payload;
  g.segs += f.m->nb_segs;
  g.next_ip_id = static_cast<uint16_t>(f.ip_id + 1);
  // tcp_gro_receive: a short segment or PSH ends the packet.
  if (f.payload < g.mss || f.psh) g.open = false;
  g.psh = f.psh;
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
  L3View v;
  if (!l3_view(m, v)) {
    m->ol_flags &= ~kTxMetaMask;
    m->tso_segsz = 0;
    return false;
  }
  const uint16_t ph = pseudo_sum(v, IPPROTO_TCP, v.l4_len);
  std::memcpy(tcp + 16, &ph, 2);
  return true;
}

}  // namespace

// ---------------------------------------------------------------- pkt::

namespace pkt {

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
  const uint32_t pt =
      rte_net_get_ptype(m, &lens, RTE_PTYPE_L2_MASK | RTE_PTYPE_L3_MASK | RTE_PTYPE_L4_MASK);
  const uint32_t l4 = pt & RTE_PTYPE_L4_MASK;
  const bool v4 = RTE_ETH_IS_IPV4_HDR(pt);
  const bool v6 = RTE_ETH_IS_IPV6_HDR(pt);
  if ((!v4 && !v6) || (l4 != RTE_PTYPE_L4_TCP && l4 != RTE_PTYPE_L4_UDP)) return false;
  if (static_cast<uint32_t>(lens.l2_len) + lens.l3_len + lens.l4_len > m->data_len) return false;
  if (lens.l2_len > 127 || lens.l3_len > 511) return false;
  out.flags &= ~(PacketMeta::kIpv4 | PacketMeta::kIpv6 | PacketMeta::kTcp | PacketMeta::kUdp);
  out.flags |= (v4 ? PacketMeta::kIpv4 : PacketMeta::kIpv6) |
               (l4 == RTE_PTYPE_L4_TCP ? PacketMeta::kTcp : PacketMeta::kUdp);
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
  for (size_t base = 0; base < pkts.size(); base += kGroBurstMax) {
    const uint32_t n = static_cast<uint32_t>(std::min(pkts.size() - base, kGroBurstMax));
    GroFrame fr[kGroBurstMax];
    GroGroup groups[kGroBurstMax];
    uint32_t group_of[kGroBurstMax];   // frame -> group
    uint32_t next_in[kGroBurstMax];    // frame -> next frame of its group, or n
    uint32_t flow_group[kGroBurstMax]; // flows seen: their latest group
    uint32_t n_groups = 0;
    uint32_t n_flows = 0;
    for (uint32_t i = 0; i < n; ++i) {
      fr[i].m = mb(pkts[base + i]);
      next_in[i] = n;
      gro_classify(fr[i]);
      if (fr[i].barrier) {
        for (uint32_t k = 0; k < n_flows; ++k) groups[flow_group[k]].open = false;
      }
      uint32_t flow = n_flows;
      if (fr[i].ip != nullptr) {
        for (uint32_t k = 0; k < n_flows; ++k) {
          if (gro_same_flow(fr[groups[flow_group[k]].first], fr[i])) {
            flow = k;
            break;
          }
        }
      }
      if (flow < n_flows) {
        GroGroup& g = groups[flow_group[flow]];
        if (gro_may_join(g, fr[g.first], fr[i], opts)) {
          next_in[g.last] = i;
          group_of[i] = flow_group[flow];
          gro_join(g, fr[i], i);
          continue;
        }
        g.open = false;  // whatever follows starts after this frame
      }
      // A group of its own (a frame of another protocol is its own group
      // and never a flow's).
      GroGroup& g = groups[n_groups];
      gro_start(g, fr[i], i);
      group_of[i] = n_groups;
      if (fr[i].ip != nullptr) {
        if (flow < n_flows) flow_group[flow] = n_groups;
        else flow_group[n_flows++] = n_groups;
      }
      ++n_groups;
    }
    // Each group in the place of its first frame.
    for (uint32_t i = 0; i < n; ++i) {
      GroGroup& g = groups[group_of[i]];
      if (g.first != i) continue;
      if (g.frames == 1) {
        pkts[out_n++] = pb(fr[i].m);
        continue;
      }
      rte_mbuf* ms[kGroBurstMax];
      uint32_t k = 0;
      for (uint32_t j = i; j < n; j = next_in[j]) {
        // The library only takes ACK; PSH goes back on the merged header.
        if (fr[j].psh) fr[j].tcp[13] = RTE_TCP_ACK_FLAG;
        ms[k++] = fr[j].m;
      }
      rte_gro_param param{};
      param.gro_types = RTE_GRO_TCP_IPV4;
      param.max_flow_num = 1;
      param.max_item_per_flow = static_cast<uint16_t>(k);
      const uint16_t got = rte_gro_reassemble_burst(ms, static_cast<uint16_t>(k), &param);
      // One flow, in sequence, within the length bound: the library merges
      // it whole unless it disagrees on something checked above (then its
      // items come back in sequence order, the later ones unmerged or in
      // shorter runs).
      for (uint16_t j = 0; j < got; ++j) {
        rte_mbuf* m = ms[j];
        const bool last = j + 1 == got;
        const uint32_t payload = m->pkt_len - (static_cast<uint32_t>(m->l2_len) + m->l3_len + m->l4_len);
        if (payload > g.mss) {
          if (gro_finish(m, g.mss, last && g.psh)) {
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
  std::snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", bytes[0], bytes[1], bytes[2],
                bytes[3], bytes[4], bytes[5]);
  return buf;
}

// ---------------------------------------------------------------- pools

namespace {

std::atomic<uint32_t> g_name_seq{0};

std::string unique_name(const std::string& prefix, const char* what) {
  // rte_mempool/rte_ring names are at most 25 usable characters.
  std::string base = prefix.substr(0, 12);
  return base + "_" + what + std::to_string(g_name_seq.fetch_add(1, std::memory_order_relaxed));
}

// Owned by the control thread that created it; allocation and freeing of its
// buffers are thread-safe (DPDK mempools, multi-producer/consumer). Touches
// no guest memory itself; external segments reference guest pages.
class DpdkPool final : public PacketPool {
 public:
  DpdkPool(rte_mempool* pkt, rte_mempool* ext, uint16_t data_room) noexcept
      : pkt_(pkt), ext_(ext), data_room_(data_room) {}
  ~DpdkPool() override {
    // Freeing a mempool with buffers still out turns every later free of
    // those buffers into a use-after-free; leaking the pool is the lesser evil.
    if (in_use() != 0) {
      spdlog::error("dpdk: pool {} destroyed with {} buffers in use; leaking it", pkt_->name, in_use());
      return;
    }
    rte_mempool_free(pkt_);
    rte_mempool_free(ext_);
  }

  PacketBuf* alloc() noexcept override { return pb(rte_pktmbuf_alloc(pkt_)); }

  size_t alloc_bulk(std::span<PacketBuf*> out) noexcept override {
    if (out.empty() || out.size() > UINT_MAX) return 0;
    auto** ms = reinterpret_cast<rte_mbuf**>(out.data());
    return rte_pktmbuf_alloc_bulk(pkt_, ms, static_cast<unsigned>(out.size())) == 0 ? out.size() : 0;
  }

  bool append_copy(PacketBuf* p, std::span<const std::byte> bytes) noexcept override {
    rte_mbuf* m = mb(p);
    rte_mbuf* last = rte_pktmbuf_lastseg(m);
    size_t done = 0;
    // Fill the last segment's tailroom first (when we own its bytes).
    if (RTE_MBUF_DIRECT(last) && rte_mbuf_refcnt_read(last) == 1) {
      const size_t n = std::min<size_t>(rte_pktmbuf_tailroom(last), bytes.size());
      if (n > 0) {
        std::memcpy(rte_pktmbuf_mtod_offset(last, std::byte*, last->data_len), bytes.data(), n);
        last->data_len = static_cast<uint16_t>(last->data_len + n);
        m->pkt_len += static_cast<uint32_t>(n);
        done = n;
      }
    }
    rte_mbuf* chain = nullptr;
    rte_mbuf* tail = nullptr;
    uint32_t added_segs = 0;
    const size_t rest = bytes.size() - done;
    while (done < bytes.size()) {
      rte_mbuf* s = rte_pktmbuf_alloc(pkt_);
      if (s == nullptr || m->nb_segs + added_segs + 1 > RTE_MBUF_MAX_NB_SEGS) {
        rte_pktmbuf_free(s);
        rte_pktmbuf_free(chain);
        // Undo the tailroom fill: all or nothing.
        const size_t filled = bytes.size() - rest;
        last->data_len = static_cast<uint16_t>(last->data_len - filled);
        m->pkt_len -= static_cast<uint32_t>(filled);
        return false;
      }
      s->data_off = 0;  // no headroom needed in continuation segments
      const size_t n = std::min<size_t>(rte_pktmbuf_tailroom(s), bytes.size() - done);
      std::memcpy(rte_pktmbuf_mtod(s, std::byte*), bytes.data() + done, n);
      s->data_len = static_cast<uint16_t>(n);
      if (tail == nullptr) chain = s;
      else tail->next = s;
      tail = s;
      ++added_segs;
      done += n;
    }
    if (chain != nullptr) {
      last->next = chain;
      m->nb_segs = static_cast<uint16_t>(m->nb_segs + added_segs);
      m->pkt_len += static_cast<uint32_t>(rest);
    }
    return true;
  }

  std::span<std::byte> append_owned(PacketBuf* p, size_t len) noexcept override {
    if (len == 0 || len > data_room_) return {};
    if (auto room = pkt::append_room(p, len); !room.empty()) return room;
    rte_mbuf* m = mb(p);
    if (m->nb_segs >= RTE_MBUF_MAX_NB_SEGS) return {};
    rte_mbuf* s = rte_pktmbuf_alloc(pkt_);
    if (s == nullptr) return {};
    s->data_off = 0;  // continuation segments need no headroom
    s->data_len = static_cast<uint16_t>(len);
    rte_pktmbuf_lastseg(m)->next = s;
    m->nb_segs++;
    m->pkt_len += static_cast<uint32_t>(len);
    return {rte_pktmbuf_mtod(s, std::byte*), len};
  }

  bool attach_external(PacketBuf* p, const ExtBuf& ext) noexcept override {
    if (ext.addr == nullptr || ext.len == 0 || ext.shared == nullptr || ext.free_fn == nullptr) return false;
    rte_mbuf* m = mb(p);
    if (m->nb_segs >= RTE_MBUF_MAX_NB_SEGS) return false;
    rte_mbuf* holder = rte_pktmbuf_alloc(ext_);
    if (holder == nullptr) return false;
    auto* shinfo = new (ext.shared->storage) rte_mbuf_ext_shared_info{};
    shinfo->free_cb = ext.free_fn;
    shinfo->fcb_opaque = ext.opaque;
    rte_mbuf_ext_refcnt_set(shinfo, 1);
    // Software ports never use the IOVA; in VA mode it is the address anyway.
    const rte_iova_t iova =
        rte_eal_iova_mode() == RTE_IOVA_VA ? static_cast<rte_iova_t>(reinterpret_cast<uintptr_t>(ext.addr))
                                           : RTE_BAD_IOVA;
    rte_pktmbuf_attach_extbuf(holder, ext.addr, iova, ext.len, shinfo);
    holder->data_len = ext.len;
    rte_pktmbuf_lastseg(m)->next = holder;
    m->nb_segs++;
    m->pkt_len += ext.len;
    return true;
  }

  Result<size_t> segment(PacketBuf* p, std::span<PacketBuf*> out) noexcept override {
    rte_mbuf* m = mb(p);
    const uint64_t f = m->ol_flags;
    const bool v4 = (f & RTE_MBUF_F_TX_IPV4) != 0;
    const bool v6 = (f & RTE_MBUF_F_TX_IPV6) != 0;
    const uint32_t hdr = static_cast<uint32_t>(m->l2_len) + m->l3_len + m->l4_len;
    const uint16_t mss = m->tso_segsz;
    if ((f & RTE_MBUF_F_TX_TCP_SEG) == 0 || mss == 0 || v4 == v6 || m->l4_len < 20 ||
        hdr > m->data_len || hdr + mss > UINT16_MAX) {
      return unexpected(EINVAL);
    }
    if (m->pkt_len <= hdr + mss) {
      m->ol_flags &= ~RTE_MBUF_F_TX_TCP_SEG;
      return size_t{0};
    }
    const size_t need = (m->pkt_len - hdr + mss - 1) / mss;
    if (need > out.size()) return unexpected(EINVAL);
    // The TCP header must really be where l2/l3 say (guest-written bytes).
    const uint8_t* h = rte_pktmbuf_mtod(m, const uint8_t*);
    if (((h[m->l2_len + m->l3_len + 12] >> 4) * 4u) != m->l4_len) return unexpected(EINVAL);
    L3View v;
    if (!l3_view(m, v) || m->l2_len + m->l3_len + v.l4_len != m->pkt_len) return unexpected(EINVAL);
    auto** ms = reinterpret_cast<rte_mbuf**>(out.data());
    int n = 0;
    if (v4) {
      rte_gso_ctx ctx{};
      ctx.direct_pool = pkt_;
      ctx.indirect_pool = ext_;
      ctx.gso_types = RTE_ETH_TX_OFFLOAD_TCP_TSO;
      ctx.gso_size = static_cast<uint16_t>(hdr + mss);
      ctx.flag = 0;  // incrementing IP ids, as Linux does without FIXEDID
      n = rte_gso_segment(m, &ctx, ms, static_cast<uint16_t>(std::min<size_t>(out.size(), UINT16_MAX)));
      // 0 here means librte_gso declined (e.g. an IP fragment).
      if (n == 0) return unexpected(EINVAL);
      if (n < 0) return unexpected(-n);
      for (int i = 0; i < n; ++i) {
        fix_tcp_flags(ms[i], m->l2_len + m->l3_len, static_cast<size_t>(i), static_cast<size_t>(n));
      }
    } else {
      n = segment_tcp6(m, mss, pkt_, ext_, ms, out.size());
      if (n < 0) return unexpected(-n);
    }
    for (int i = 0; i < n; ++i) {
      ms[i]->ol_flags = (ms[i]->ol_flags & ~(RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_L4_MASK)) |
                        RTE_MBUF_F_TX_TCP_CKSUM | (v4 ? RTE_MBUF_F_TX_IP_CKSUM : 0);
      ms[i]->tso_segsz = 0;
      ms[i]->hash = m->hash;  // every segment is of the packet's flow
    }
    m->ol_flags = f & ~RTE_MBUF_F_TX_TCP_SEG;
    return static_cast<size_t>(n);
  }

  size_t data_room() const noexcept override { return data_room_; }
  size_t in_use() const noexcept override {
    return rte_mempool_in_use_count(pkt_) + rte_mempool_in_use_count(ext_);
  }

  rte_mempool* pkt_pool() const noexcept { return pkt_; }

  // A copy of a chained packet in one fresh segment (for ports that cannot
  // take chains); nullptr when it does not fit or the pool is empty.
  rte_mbuf* linearize(rte_mbuf* m) noexcept {
    rte_mbuf* n = rte_pktmbuf_alloc(pkt_);
    if (n == nullptr) return nullptr;
    if (m->pkt_len > rte_pktmbuf_tailroom(n)) {
      rte_pktmbuf_free(n);
      return nullptr;
    }
    auto* dst = reinterpret_cast<std::byte*>(rte_pktmbuf_append(n, static_cast<uint16_t>(m->pkt_len)));
    pkt::copy_out(pb(m), 0, {dst, m->pkt_len});
    n->ol_flags = m->ol_flags;
    n->hash = m->hash;
    n->packet_type = m->packet_type;
    n->tx_offload = m->tx_offload;
    n->port = m->port;
    return n;
  }

 private:
  rte_mempool* pkt_;
  rte_mempool* ext_;
  uint16_t data_room_;
};

// ---------------------------------------------------------------- ports

constexpr size_t kTxBurstMax = 64;

// The two rings of open_ring_pair(). Either port may be closed first while
// the other still transmits into the ring the first received from, so the
// rings (and any packets left in them) go when the last port goes.
struct RingPair {
  rte_ring* r[2] = {nullptr, nullptr};
  RingPair() = default;
  RingPair(const RingPair&) = delete;
  RingPair& operator=(const RingPair&) = delete;
  ~RingPair() {
    for (rte_ring* ring : r) {
      if (ring == nullptr) continue;
      void* obj = nullptr;
      while (rte_ring_dequeue(ring, &obj) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(obj));
      rte_ring_free(ring);
    }
  }
};

// One DPDK ethdev. Control (constructor, destructor, link/mac queries)
// belongs to the control thread holding DpdkEnv's lock; queue q's bursts
// belong to one datapath thread at a time, which alone writes that queue's
// state and counters. Touches guest memory only through external segments
// of the packets it transmits (read by the device/PMD).
class DpdkPort final : public PacketPort {
 public:
  struct Owned {
    rte_device* device = nullptr;     // removed on close
    std::shared_ptr<RingPair> rings;  // a ring pair's, freed with its last port
    std::vector<int> rx_fds;          // per queue receive wake-up fds (the PMD's), or empty
  };

  DpdkPort(DpdkEnv& env, DpdkPool& pool, uint16_t port_id, std::string name, const DpdkPortConfig& cfg,
           PortCaps caps, uint64_t tx_offloads, Owned owned)
      : env_(env),
        pool_(pool),
        port_id_(port_id),
        name_(std::move(name)),
        cfg_(cfg),
        caps_(caps),
        tx_offloads_(tx_offloads),
        owned_(std::move(owned)),
        rxq_(cfg.rx_queues),
        txq_(cfg.tx_queues) {
    const size_t cap = static_cast<size_t>(cfg.gso_max_segments) + 2 * kTxBurstMax;
    for (auto& q : txq_) {
      q.frames.reserve(cap);
      q.lens.reserve(cap);
      q.capacity = cap;
      q.gso_out.resize(cfg.gso_max_segments);
    }
  }

  ~DpdkPort() override {
    std::lock_guard<std::mutex> lock(env_.control_lock());
    for (auto& q : txq_) {
      for (size_t i = q.begin; i < q.frames.size(); ++i) rte_pktmbuf_free(q.frames[i]);
      q.frames.clear();
    }
    // Packets still queued inside the device (a ring port's ring) belong
    // to our pool; take them back while the queues still run (a stopped
    // port's burst functions are stubs).
    for (uint16_t q = 0; q < rxq_.size(); ++q) {
      rte_mbuf* ms[kTxBurstMax];
      for (int rounds = 0; rounds < 4096; ++rounds) {
        const uint16_t n = rte_eth_rx_burst(port_id_, q, ms, kTxBurstMax);
        if (n == 0) break;
        for (uint16_t i = 0; i < n; ++i) rte_pktmbuf_free(ms[i]);
      }
    }
    rte_eth_dev_stop(port_id_);
    rte_eth_dev_close(port_id_);
    if (owned_.device != nullptr) {
      const int rc = rte_dev_remove(owned_.device);
      if (rc < 0) spdlog::warn("dpdk: removing {}: {}", name_, rte_strerror(-rc));
    }
  }

  const std::string& name() const noexcept override { return name_; }
  uint16_t rx_queues() const noexcept override { return static_cast<uint16_t>(rxq_.size()); }
  uint16_t tx_queues() const noexcept override { return static_cast<uint16_t>(txq_.size()); }

  size_t rx_burst(uint16_t queue, std::span<PacketBuf*> out) noexcept override {
    if (queue >= rxq_.size() || out.empty()) return 0;
    auto** ms = reinterpret_cast<rte_mbuf**>(out.data());
    const uint16_t n =
        rte_eth_rx_burst(port_id_, queue, ms, static_cast<uint16_t>(std::min<size_t>(out.size(), UINT16_MAX)));
    if (n > 0) {
      uint64_t bytes = 0;
      for (uint16_t i = 0; i < n; ++i) bytes += ms[i]->pkt_len;
      rxq_[queue].packets.add(n);
      rxq_[queue].bytes.add(bytes);
    }
    return n;
  }

  size_t tx_burst(uint16_t queue, std::span<PacketBuf* const> pkts) noexcept override {
    if (queue >= txq_.size()) return 0;
    TxQueue& q = txq_[queue];
    flush(queue, q);
    size_t taken = 0;
    for (PacketBuf* p : pkts) {
      const size_t need = frames_needed(mb(p));
      if (q.pending() + need > q.capacity) {
        flush(queue, q);
        if (q.pending() + need > q.capacity) break;  // device full: backpressure
      }
      prepare(q, mb(p));
      ++taken;
    }
    flush(queue, q);
    return taken;
  }

  int rx_wait_fd(uint16_t q) const noexcept override {
    return q < owned_.rx_fds.size() ? owned_.rx_fds[q] : -1;
  }
  size_t tx_pending(uint16_t queue) const noexcept override {
    return queue < txq_.size() ? txq_[queue].pending() : 0;
  }

  PortCaps caps() const noexcept override { return caps_; }

  MacAddr mac() const noexcept override {
    rte_ether_addr a{};
    MacAddr r;
    if (rte_eth_macaddr_get(port_id_, &a) == 0) std::memcpy(r.bytes.data(), a.addr_bytes, 6);
    return r;
  }

  LinkStatus link() const noexcept override {
    rte_eth_link l{};
    LinkStatus r;
    if (rte_eth_link_get_nowait(port_id_, &l) == 0) {
      r.up = l.link_status == RTE_ETH_LINK_UP;
      r.speed_mbps = l.link_speed == RTE_ETH_SPEED_NUM_UNKNOWN ? 0 : l.link_speed;
      r.full_duplex = l.link_duplex == RTE_ETH_LINK_FULL_DUPLEX;
    }
    return r;
  }

  PortQueueStats stats(uint16_t queue) const noexcept override {
    PortQueueStats s;
    if (queue < rxq_.size()) {
      s.rx_packets = rxq_[queue].packets.get();
      s.rx_bytes = rxq_[queue].bytes.get();
    }
    if (queue < txq_.size()) {
      const TxQueue& q = txq_[queue];
      s.tx_packets = q.packets.get();
      s.tx_bytes = q.bytes.get();
      s.tx_dropped = q.dropped.get();
      s.tx_gso_packets = q.gso_packets.get();
      s.tx_gso_segments = q.gso_segments.get();
      s.tx_sw_csum = q.sw_csum.get();
    }
    return s;
  }

 private:
  struct RxQueue {
    Counter packets, bytes;
  };
  struct TxQueue {
    // Frames ready for the device, oldest first from `begin`.
    std::vector<rte_mbuf*> frames;
    std::vector<uint32_t> lens;
    size_t begin = 0;
    size_t capacity = 0;
    std::vector<PacketBuf*> gso_out;
    Counter packets, bytes, dropped, gso_packets, gso_segments, sw_csum;
    [[nodiscard]] size_t pending() const noexcept { return frames.size() - begin; }
  };

  bool hw_tso() const noexcept { return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_TCP_TSO) != 0; }
  bool hw_ip() const noexcept { return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) != 0; }
  bool hw_l4(uint64_t f) const noexcept {
    const uint64_t l4 = f & RTE_MBUF_F_TX_L4_MASK;
    if (l4 == RTE_MBUF_F_TX_UDP_CKSUM) return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_UDP_CKSUM) != 0;
    return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_TCP_CKSUM) != 0;
  }

  // Worst-case frames a packet turns into, so a burst never overfills the
  // backlog halfway through a packet.
  size_t frames_needed(const rte_mbuf* m) const noexcept {
    if (cfg_.pass_metadata || (m->ol_flags & RTE_MBUF_F_TX_TCP_SEG) == 0 || hw_tso() || m->tso_segsz == 0) {
      return 1;
    }
    const uint32_t hdr = static_cast<uint32_t>(m->l2_len) + m->l3_len + m->l4_len;
    if (m->pkt_len <= hdr) return 1;
    // Packets needing more than the limit are dropped: they need no room.
    return std::min<size_t>((m->pkt_len - hdr + m->tso_segsz - 1) / m->tso_segsz, cfg_.gso_max_segments);
  }

  void drop(TxQueue& q, rte_mbuf* m) noexcept {
    rte_pktmbuf_free(m);
    q.dropped.add();
  }

  // Checksums for one frame: in hardware where enabled, else in software.
  bool finish_checksums(TxQueue& q, rte_mbuf* m) noexcept {
    const uint64_t f = m->ol_flags;
    const bool want_ip = (f & RTE_MBUF_F_TX_IP_CKSUM) != 0;
    const bool want_l4 = (f & RTE_MBUF_F_TX_L4_MASK) != 0;
    if (!want_ip && !want_l4) return true;
    const bool sw_ip = want_ip && !hw_ip();
    const bool sw_l4 = want_l4 && !hw_l4(f);
    if (sw_ip || sw_l4) {
      if (!sw_checksums(m, sw_ip, sw_l4)) return false;
      q.sw_csum.add();
    }
    return hw_checksum_prepare(m, want_ip && !sw_ip, want_l4 && !sw_l4);
  }

  void enqueue(TxQueue& q, rte_mbuf* m) noexcept {
    if (m->nb_segs > 1 && !caps_.multi_segment) {
      rte_mbuf* flat = pool_.linearize(m);
      rte_pktmbuf_free(m);
      if (flat == nullptr) {
        q.dropped.add();
        return;
      }
      m = flat;
    }
    q.frames.push_back(m);
    q.lens.push_back(m->pkt_len);
  }

  void prepare(TxQueue& q, rte_mbuf* m) noexcept {
    const uint64_t f = m->ol_flags;
    if (cfg_.pass_metadata) {
      enqueue(q, m);
      return;
    }
    if ((f & RTE_MBUF_F_TX_TCP_SEG) != 0) {
      if (hw_tso()) {
        if (!hw_checksum_prepare(m, true, true)) return drop(q, m);
        return enqueue(q, m);
      }
      auto r = pool_.segment(pb(m), q.gso_out);
      if (!r) return drop(q, m);
      if (*r == 0) {  // fits in one segment: an ordinary packet now
        if (!finish_checksums(q, m)) return drop(q, m);
        return enqueue(q, m);
      }
      rte_pktmbuf_free(m);  // the segments hold their own references
      q.gso_packets.add();
      q.gso_segments.add(*r);
      for (size_t i = 0; i < *r; ++i) {
        rte_mbuf* s = mb(q.gso_out[i]);
        if (!finish_checksums(q, s)) {
          drop(q, s);
          continue;
        }
        enqueue(q, s);
      }
      return;
    }
    if (!finish_checksums(q, m)) return drop(q, m);
    enqueue(q, m);
  }

  void flush(uint16_t queue, TxQueue& q) noexcept {
    while (q.pending() > 0) {
      const uint16_t want = static_cast<uint16_t>(std::min<size_t>(q.pending(), kTxBurstMax));
      const uint16_t n = rte_eth_tx_burst(port_id_, queue, q.frames.data() + q.begin, want);
      if (n > 0) {
        uint64_t bytes = 0;
        for (uint16_t i = 0; i < n; ++i) bytes += q.lens[q.begin + i];
        q.packets.add(n);
        q.bytes.add(bytes);
        q.begin += n;
      }
      if (n < want) break;  // device full: keep the rest for the next call
    }
    if (q.begin == q.frames.size()) {
      q.frames.clear();
      q.lens.clear();
      q.begin = 0;
    } else if (q.begin > 0) {
      q.frames.erase(q.frames.begin(), q.frames.begin() + static_cast<ptrdiff_t>(q.begin));
      q.lens.erase(q.lens.begin(), q.lens.begin() + static_cast<ptrdiff_t>(q.begin));
      q.begin = 0;
    }
  }

  DpdkEnv& env_;
  DpdkPool& pool_;
  const uint16_t port_id_;
  const std::string name_;
  const DpdkPortConfig cfg_;
  const PortCaps caps_;
  const uint64_t tx_offloads_;  // enabled on the device
  Owned owned_;
  std::vector<RxQueue> rxq_;
  std::vector<TxQueue> txq_;
};

// ---------------------------------------------------------------- EAL

// DPDK's log lines go through spdlog with the level of the message.
ssize_t log_write(void* /*cookie*/, const char* buf, size_t size) {
  const int lvl = rte_log_cur_msg_loglevel();
  spdlog::level::level_enum sl = spdlog::level::trace;
  if (lvl <= static_cast<int>(RTE_LOG_ERR)) sl = spdlog::level::err;
  else if (lvl == static_cast<int>(RTE_LOG_WARNING)) sl = spdlog::level::warn;
  else if (lvl == static_cast<int>(RTE_LOG_NOTICE)) sl = spdlog::level::info;
  else if (lvl == static_cast<int>(RTE_LOG_INFO)) sl = spdlog::level::debug;
  std::string_view text(buf, size);
  try {
    while (!text.empty()) {
      const size_t nl = text.find('\n');
      const std::string_view line = text.substr(0, nl);
      if (!line.empty()) spdlog::log(sl, "dpdk: {}", line);
      if (nl == std::string_view::npos) break;
      text.remove_prefix(nl + 1);
    }
  } catch (...) {
  }
  return static_cast<ssize_t>(size);
}

std::string cpu_list(const cpu_set_t& set) {
  std::string s;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    if (!s.empty()) s += ',';
    s += std::to_string(c);
  }
  return s;
}

std::mutex g_init_lock;
DpdkEnv* g_env = nullptr;
int g_init_error = 0;

// The device name part of devargs ("net_tap_vif5_0" of "net_tap_vif5_0,iface=...").
std::string devargs_name(const std::string& devargs) { return devargs.substr(0, devargs.find(',')); }

}  // namespace

std::vector<std::string> dpdk_default_eal_args(const DpdkEnvOptions& opts) {
  std::vector<std::string> a = {"--no-huge", "--no-shconf", "-m", std::to_string(opts.memory_mb),
                                "--no-telemetry"};
  cpu_set_t set;
  CPU_ZERO(&set);
  if (pthread_getaffinity_np(pthread_self(), sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
    a.push_back("--lcores=0@(" + cpu_list(set) + ")");
  }
  if (opts.pci_allow.empty()) {
    a.emplace_back("--no-pci");
  } else {
    for (const auto& bdf : opts.pci_allow) {
      a.emplace_back("-a");
      a.push_back(bdf);
    }
  }
  if (!opts.log_level.empty()) a.push_back("--log-level=" + opts.log_level);
  return a;
}

Result<std::string> expand_devargs(std::string_view tmpl, DomId domid, uint32_t devid) {
  std::string out;
  size_t i = 0;
  while (i < tmpl.size()) {
    const char c = tmpl[i];
    if (c == '}') return unexpected(EINVAL);
    if (c != '{') {
      out += c;
      ++i;
      continue;
    }
    const size_t close = tmpl.find('}', i);
    if (close == std::string_view::npos) return unexpected(EINVAL);
    const std::string_view key = tmpl.substr(i + 1, close - i - 1);
    if (key == "domid") out += std::to_string(domid);
    else if (key == "devid") out += std::to_string(devid);
    else return unexpected(EINVAL);
    i = close + 1;
  }
  if (out.empty() || out.front() == ',') return unexpected(EINVAL);
  return out;
}

Result<DpdkEnv*> DpdkEnv::init(const DpdkEnvOptions& opts) noexcept {
  std::lock_guard<std::mutex> lock(g_init_lock);
  if (g_env != nullptr) return g_env;
  if (g_init_error != 0) return unexpected(g_init_error);
  try {
    std::vector<std::string> args = opts.eal_args.empty() ? dpdk_default_eal_args(opts) : opts.eal_args;
    // EAL keeps pointers into argv: these strings live as long as the process.
    static std::vector<std::string> storage;
    storage.clear();
    storage.emplace_back("xenpath");
    storage.insert(storage.end(), args.begin(), args.end());
    static std::vector<char*> argv;
    argv.clear();
    for (auto& s : storage) argv.push_back(s.data());
    argv.push_back(nullptr);

    static cookie_io_functions_t fns{nullptr, log_write, nullptr, nullptr};
    if (FILE* f = fopencookie(nullptr, "w", fns); f != nullptr) rte_openlog_stream(f);

    cpu_set_t saved;
    const bool have_aff = pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) == 0;
    const int rc = rte_eal_init(static_cast<int>(argv.size() - 1), argv.data());
    // EAL pins its main lcore; this thread keeps the CPUs it had (other
    // work in the process, e.g. other tests or the control reactor, runs
    // here too).
    if (have_aff) pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
    if (rc < 0) {
      g_init_error = rte_errno != 0 ? rte_errno : EINVAL;
      spdlog::error("dpdk: rte_eal_init failed: {}", rte_strerror(g_init_error));
      return unexpected(g_init_error);
    }
    rte_mbuf_dynflag l4desc{};
    std::snprintf(l4desc.name, sizeof l4desc.name, "%s", kHashL4FlagName);
    if (const int bit = rte_mbuf_dynflag_register(&l4desc); bit >= 0) {
      g_hash_l4_flag.store(uint64_t{1} << bit, std::memory_order_relaxed);
    } else {
      spdlog::warn("dpdk: cannot register the {} mbuf flag: L4 flow hashes pass as L3", kHashL4FlagName);
    }
    g_env = new DpdkEnv(std::move(args));
    spdlog::info("dpdk: EAL up ({}), IOVA mode {}", rte_version(),
                 rte_eal_iova_mode() == RTE_IOVA_VA ? "VA" : "PA");
    return g_env;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

DpdkEnv* DpdkEnv::get() noexcept {
  std::lock_guard<std::mutex> lock(g_init_lock);
  return g_env;
}

Status DpdkEnv::register_thread() noexcept {
  if (rte_lcore_id() != LCORE_ID_ANY) return ok();  // already an EAL/registered thread
  if (rte_thread_register() != 0) return unexpected(rte_errno != 0 ? rte_errno : ENOSPC);
  return ok();
}

void DpdkEnv::unregister_thread() noexcept {
  if (rte_lcore_id() != LCORE_ID_ANY && rte_lcore_id() != rte_get_main_lcore()) rte_thread_unregister();
}

Result<std::unique_ptr<PacketPool>> DpdkEnv::create_pool(const DpdkPoolConfig& cfg) noexcept {
  if (cfg.packets == 0 || cfg.attachments == 0 || cfg.data_room < 128) return unexpected(EINVAL);
  try {
    std::lock_guard<std::mutex> lock(control_);
    const std::string pn = unique_name(cfg.name, "p");
    const std::string en = unique_name(cfg.name, "x");
    const uint32_t cache = std::min<uint32_t>(cfg.cache, RTE_MEMPOOL_CACHE_MAX_SIZE);
    rte_mempool* pkt = rte_pktmbuf_pool_create(pn.c_str(), cfg.packets, std::min(cache, cfg.packets / 2), 0,
                                               static_cast<uint16_t>(cfg.data_room + RTE_PKTMBUF_HEADROOM),
                                               SOCKET_ID_ANY);
    if (pkt == nullptr) return unexpected(rte_errno != 0 ? rte_errno : ENOMEM);
    rte_mempool* ext =
        rte_pktmbuf_pool_create(en.c_str(), cfg.attachments, std::min(cache, cfg.attachments / 2), 0, 0, SOCKET_ID_ANY);
    if (ext == nullptr) {
      const int e = rte_errno != 0 ? rte_errno : ENOMEM;
      rte_mempool_free(pkt);
      return unexpected(e);
    }
    return std::unique_ptr<PacketPool>(std::make_unique<DpdkPool>(pkt, ext, cfg.data_room));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

namespace {

// Configures and starts an existing ethdev. Caller holds the control lock.
Result<std::unique_ptr<PacketPort>> start_port(DpdkEnv& env, DpdkPool& pool, uint16_t port_id,
                                               const DpdkPortConfig& cfg, DpdkPort::Owned owned) {
  auto fail = [&](int e) -> Result<std::unique_ptr<PacketPort>> {
    rte_eth_dev_close(port_id);
    if (owned.device != nullptr) rte_dev_remove(owned.device);
    return unexpected(e);
  };
  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(port_id, &info); rc != 0) return fail(-rc);
  if (cfg.rx_queues == 0 || cfg.tx_queues == 0 || cfg.rx_queues > info.max_rx_queues ||
      cfg.tx_queues > info.max_tx_queues) {
    return fail(EINVAL);
  }
  uint64_t tx_capa = info.tx_offload_capa;
  // net_tap's "offloads" are software inside the PMD, and in DPDK 22.11 its
  // checksum of a chained mbuf is wrong when a segment has an odd length
  // (seen with guest fragments; the integration test catches it). Doing the
  // same work here costs the same and is correct.
  if (std::strcmp(info.driver_name, "net_tap") == 0) {
    tx_capa &= ~(RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM |
                 RTE_ETH_TX_OFFLOAD_TCP_TSO);
  }
  uint64_t tx_off = tx_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
  if (cfg.hw_offloads && !cfg.pass_metadata) {
    tx_off |= tx_capa & (RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM |
                         RTE_ETH_TX_OFFLOAD_UDP_CKSUM);
    // TSO needs the TCP checksum offload too (the NIC fills every segment's).
    if ((tx_capa & RTE_ETH_TX_OFFLOAD_TCP_TSO) != 0 && (tx_off & RTE_ETH_TX_OFFLOAD_TCP_CKSUM) != 0) {
      tx_off |= RTE_ETH_TX_OFFLOAD_TCP_TSO;
    }
  }
  const uint64_t rx_capa = info.rx_offload_capa;
  uint64_t rx_off = rx_capa & (RTE_ETH_RX_OFFLOAD_SCATTER);
  if (cfg.hw_offloads) {
    rx_off |= rx_capa & (RTE_ETH_RX_OFFLOAD_TCP_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM |
                         RTE_ETH_RX_OFFLOAD_IPV4_CKSUM);
  }
  rte_eth_conf conf{};
  conf.txmode.offloads = tx_off;
  conf.rxmode.offloads = rx_off;
  // net_tap's receive "interrupt" is its queue's tun fd, readable while
  // frames wait: the reactor can sleep on it instead of polling the port.
  // Other PMDs' eventfd interrupts need an ack protocol not done here.
  const bool want_intr = cfg.rx_interrupts && std::strcmp(info.driver_name, "net_tap") == 0;
  conf.intr_conf.rxq = want_intr ? 1 : 0;
  if (int rc = rte_eth_dev_configure(port_id, cfg.rx_queues, cfg.tx_queues, &conf); rc != 0) return fail(-rc);
  uint16_t rxd = cfg.rx_desc;
  uint16_t txd = cfg.tx_desc;
  if (int rc = rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &rxd, &txd); rc != 0) return fail(-rc);
  const int socket = rte_eth_dev_socket_id(port_id);
  for (uint16_t q = 0; q < cfg.rx_queues; ++q) {
    rte_eth_rxconf rxc = info.default_rxconf;
    rxc.offloads = rx_off;
    if (int rc = rte_eth_rx_queue_setup(port_id, q, rxd, socket, &rxc, pool.pkt_pool()); rc != 0) return fail(-rc);
  }
  for (uint16_t q = 0; q < cfg.tx_queues; ++q) {
    rte_eth_txconf txc = info.default_txconf;
    txc.offloads = tx_off;
    if (int rc = rte_eth_tx_queue_setup(port_id, q, txd, socket, &txc); rc != 0) return fail(-rc);
  }
  if (cfg.mtu != 0) {
    if (int rc = rte_eth_dev_set_mtu(port_id, static_cast<uint16_t>(cfg.mtu)); rc != 0) return fail(-rc);
  }
  if (int rc = rte_eth_dev_start(port_id); rc != 0) return fail(-rc);
  if (want_intr) {
    for (uint16_t q = 0; q < cfg.rx_queues; ++q) {
      (void)rte_eth_dev_rx_intr_enable(port_id, q);
      const int fd = rte_eth_dev_rx_intr_ctl_q_get_fd(port_id, q);
      if (fd < 0) {
        spdlog::warn("dpdk: port {}: no receive interrupt fd for queue {}; polling instead", port_id, q);
        owned.rx_fds.clear();
        break;
      }
      owned.rx_fds.push_back(fd);
    }
  }

  PortCaps caps;
  caps.multi_segment = (tx_off & RTE_ETH_TX_OFFLOAD_MULTI_SEGS) != 0;
  caps.tso = (tx_off & RTE_ETH_TX_OFFLOAD_TCP_TSO) != 0;
  caps.ip_csum = (tx_off & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) != 0;
  caps.l4_csum = (tx_off & (RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM)) ==
                 (RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM);
  caps.rx_csum = (rx_off & (RTE_ETH_RX_OFFLOAD_TCP_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM)) != 0;
  if (cfg.pass_metadata) {
    // The in-process receiver does the work (or passes it on to a guest).
    caps.tso = caps.ip_csum = caps.l4_csum = true;
    caps.multi_segment = true;
  }
  // Software ports copy with the CPU; a NIC would need grant-mapped pages
  // DMA-mapped, which this adapter does not do. virtio_user is a vdev but
  // not a CPU copier: its vhost backend (vhost-net, or a vhost-user switch)
  // reads buffers through the memory table DPDK registered, which a
  // grant-mapped guest page is not in, so it gets copies too.
  const char* bus = info.device != nullptr ? rte_bus_name(rte_dev_bus(info.device)) : "";
  caps.external_buffers = bus != nullptr && std::strcmp(bus, "vdev") == 0 &&
                          std::strcmp(info.driver_name, "net_virtio_user") != 0;
  uint16_t mtu = 0;
  if (rte_eth_dev_get_mtu(port_id, &mtu) == 0) caps.mtu = mtu;

  char name[RTE_ETH_NAME_MAX_LEN] = {};
  rte_eth_dev_get_name_by_port(port_id, name);
  spdlog::info("dpdk: port {} ({}) up: {} rxq {} txq, tso={} csum={}/{} multiseg={} ext={} mtu={}", name,
               info.driver_name, cfg.rx_queues, cfg.tx_queues, caps.tso, caps.ip_csum, caps.l4_csum,
               caps.multi_segment, caps.external_buffers, caps.mtu);
  return std::unique_ptr<PacketPort>(
      std::make_unique<DpdkPort>(env, pool, port_id, name, cfg, caps, tx_off, std::move(owned)));
}

}  // namespace

Result<std::unique_ptr<PacketPort>> DpdkEnv::open_port(PacketPool& pool, const DpdkPortConfig& cfg) noexcept {
  auto* dpool = dynamic_cast<DpdkPool*>(&pool);
  if (dpool == nullptr || cfg.devargs.empty()) return unexpected(EINVAL);
  try {
    std::lock_guard<std::mutex> lock(control_);
    const std::string name = devargs_name(cfg.devargs);
    uint16_t port_id = 0;
    if (rte_eth_dev_get_port_by_name(name.c_str(), &port_id) == 0) return unexpected(EEXIST);
    if (int rc = rte_dev_probe(cfg.devargs.c_str()); rc < 0) {
      spdlog::error("dpdk: probing '{}': {}", cfg.devargs, rte_strerror(-rc));
      return unexpected(-rc);
    }
    if (rte_eth_dev_get_port_by_name(name.c_str(), &port_id) != 0) {
      // A device whose ethdev is named differently (e.g. a PCI address
      // written in short form): match by devargs.
      rte_dev_iterator it{};
      bool found = false;
      RTE_ETH_FOREACH_MATCHING_DEV(port_id, cfg.devargs.c_str(), &it) {
        found = true;
        rte_eth_iterator_cleanup(&it);
        break;
      }
      if (!found) return unexpected(ENODEV);
    }
    rte_eth_dev_info info{};
    DpdkPort::Owned owned;
    if (rte_eth_dev_info_get(port_id, &info) == 0) owned.device = info.device;
    return start_port(*this, *dpool, port_id, cfg, std::move(owned));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<std::array<std::unique_ptr<PacketPort>, 2>> DpdkEnv::open_ring_pair(PacketPool& pool, const std::string& name,
                                                                           const DpdkPortConfig& base) noexcept {
  auto* dpool = dynamic_cast<DpdkPool*>(&pool);
  if (dpool == nullptr || name.empty()) return unexpected(EINVAL);
  try {
    auto rings = std::make_shared<RingPair>();
    {
      std::lock_guard<std::mutex> lock(control_);
      // One producer and one consumer per direction: each port queue has a
      // single owning thread.
      for (auto& r : rings->r) {
        const std::string rn = unique_name(name, "r");
        r = rte_ring_create(rn.c_str(), 1024, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
        if (r == nullptr) return unexpected(rte_errno != 0 ? rte_errno : ENOMEM);
      }
    }
    std::array<std::unique_ptr<PacketPort>, 2> ports;
    for (size_t i = 0; i < 2; ++i) {
      std::lock_guard<std::mutex> lock(control_);
      // rte_eth_from_rings names the device "net_ring_<name>".
      const std::string dev = name + (i == 0 ? "_a" : "_b");
      rte_ring* rx = rings->r[1 - i];
      rte_ring* tx = rings->r[i];
      const int id = rte_eth_from_rings(dev.c_str(), &rx, 1, &tx, 1, SOCKET_ID_ANY);
      if (id < 0) return unexpected(rte_errno != 0 ? rte_errno : EINVAL);
      rte_eth_dev_info info{};
      DpdkPort::Owned owned;
      if (rte_eth_dev_info_get(static_cast<uint16_t>(id), &info) == 0) owned.device = info.device;
      owned.rings = rings;
      DpdkPortConfig cfg = base;
      cfg.devargs = dev;
      cfg.rx_queues = 1;
      cfg.tx_queues = 1;
      auto p = start_port(*this, *dpool, static_cast<uint16_t>(id), cfg, std::move(owned));
      if (!p) return unexpected(p.error());
      ports[i] = std::move(*p);
    }
    return ports;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

}  // namespace xenpath
