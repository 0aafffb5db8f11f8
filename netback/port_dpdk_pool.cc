// The DPDK adapter's packet pools: mempools, PacketPool over them, and
// software segmentation (librte_gso for TCP/IPv4; TCP/IPv6, which
// librte_gso of DPDK 22.11 lacks, done here the same way). See port_dpdk.h.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_gso.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "common/log.h"
#include "netback/net_offload.h"
#include "netback/port_dpdk.h"
#include "netback/port_dpdk_internal.h"

namespace xenpath {

static_assert(sizeof(rte_mbuf_ext_shared_info) <= sizeof(ExtBufShared::storage));
static_assert(alignof(rte_mbuf_ext_shared_info) <= alignof(ExtBufShared));

namespace dpdk_detail {

namespace {

using offload::kIpv6HeaderLen;
using offload::load_be32;
using offload::store_be16;
using offload::store_be32;

std::atomic<uint32_t> g_name_seq{0};

// Linux's GSO rules for the TCP flags of segment i of n: FIN and PSH only on
// the last, CWR only on the first.
void fix_tcp_flags(rte_mbuf* seg, uint32_t tcp_off, size_t i, size_t n) noexcept {
  uint8_t* flags = rte_pktmbuf_mtod_offset(seg, uint8_t*, tcp_off + 13);
  *flags = offload::gso_segment_tcp_flags(*flags, i, n);
}

// TCP/IPv6 segmentation (librte_gso of DPDK 22.11 only does IPv4): each
// segment is a copy of the headers in a direct buffer followed by indirect
// buffers referencing the input's payload, the layout librte_gso produces.
int segment_tcp6(rte_mbuf* pkt, uint16_t mss, rte_mempool* direct, rte_mempool* indirect, rte_mbuf** out,
                 size_t n_out) noexcept {
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

}  // namespace

std::string unique_name(const std::string& prefix, const char* what) {
  // rte_mempool/rte_ring names are at most 25 usable characters.
  std::string base = prefix.substr(0, 12);
  return base + "_" + what + std::to_string(g_name_seq.fetch_add(1, std::memory_order_relaxed));
}

DpdkPool::~DpdkPool() {
  // Freeing a mempool with buffers still out turns every later free of
  // those buffers into a use-after-free; leaking the pool is the lesser evil.
  if (in_use() != 0) {
    spdlog::error("dpdk: pool {} destroyed with {} buffers in use; leaking it", pkt_->name, in_use());
    return;
  }
  rte_mempool_free(pkt_);
  rte_mempool_free(ext_);
}

size_t DpdkPool::alloc_bulk(std::span<PacketBuf*> out) noexcept {
  if (out.empty() || out.size() > UINT_MAX) return 0;
  auto** ms = reinterpret_cast<rte_mbuf**>(out.data());
  return rte_pktmbuf_alloc_bulk(pkt_, ms, static_cast<unsigned>(out.size())) == 0 ? out.size() : 0;
}

bool DpdkPool::append_copy(PacketBuf* p, std::span<const std::byte> bytes) noexcept {
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

std::span<std::byte> DpdkPool::append_owned(PacketBuf* p, size_t len) noexcept {
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

bool DpdkPool::attach_external(PacketBuf* p, const ExtBuf& ext) noexcept {
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
  const rte_iova_t iova = rte_eal_iova_mode() == RTE_IOVA_VA
                              ? static_cast<rte_iova_t>(reinterpret_cast<uintptr_t>(ext.addr))
                              : RTE_BAD_IOVA;
  rte_pktmbuf_attach_extbuf(holder, ext.addr, iova, ext.len, shinfo);
  holder->data_len = ext.len;
  rte_pktmbuf_lastseg(m)->next = holder;
  m->nb_segs++;
  m->pkt_len += ext.len;
  return true;
}

Result<size_t> DpdkPool::segment(PacketBuf* p, std::span<PacketBuf*> out) noexcept {
  rte_mbuf* m = mb(p);
  const uint64_t f = m->ol_flags;
  const bool v4 = (f & RTE_MBUF_F_TX_IPV4) != 0;
  const bool v6 = (f & RTE_MBUF_F_TX_IPV6) != 0;
  const uint32_t hdr = static_cast<uint32_t>(m->l2_len) + m->l3_len + m->l4_len;
  const uint16_t mss = m->tso_segsz;
  if ((f & RTE_MBUF_F_TX_TCP_SEG) == 0 || mss == 0 || v4 == v6 || m->l4_len < 20 || hdr > m->data_len ||
      hdr + mss > UINT16_MAX) {
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
  offload::L3View v;
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
    ms[i]->ol_flags = (ms[i]->ol_flags & ~(RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_L4_MASK)) | RTE_MBUF_F_TX_TCP_CKSUM |
                      (v4 ? RTE_MBUF_F_TX_IP_CKSUM : 0);
    ms[i]->tso_segsz = 0;
    ms[i]->hash = m->hash;  // every segment is of the packet's flow
  }
  m->ol_flags = f & ~RTE_MBUF_F_TX_TCP_SEG;
  return static_cast<size_t>(n);
}

rte_mbuf* DpdkPool::linearize(rte_mbuf* m) noexcept {
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

}  // namespace dpdk_detail

Result<std::unique_ptr<PacketPool>> DpdkEnv::create_pool(const DpdkPoolConfig& cfg) noexcept {
  if (cfg.packets == 0 || cfg.attachments == 0 || cfg.data_room < 128) return unexpected(EINVAL);
  try {
    std::lock_guard<std::mutex> lock(control_);
    const std::string pn = dpdk_detail::unique_name(cfg.name, "p");
    const std::string en = dpdk_detail::unique_name(cfg.name, "x");
    const uint32_t cache = std::min<uint32_t>(cfg.cache, RTE_MEMPOOL_CACHE_MAX_SIZE);
    rte_mempool* pkt =
        rte_pktmbuf_pool_create(pn.c_str(), cfg.packets, std::min(cache, cfg.packets / 2), 0,
                                static_cast<uint16_t>(cfg.data_room + RTE_PKTMBUF_HEADROOM), SOCKET_ID_ANY);
    if (pkt == nullptr) return unexpected(rte_errno != 0 ? rte_errno : ENOMEM);
    rte_mempool* ext =
        rte_pktmbuf_pool_create(en.c_str(), cfg.attachments, std::min(cache, cfg.attachments / 2), 0, 0, SOCKET_ID_ANY);
    if (ext == nullptr) {
      const int e = rte_errno != 0 ? rte_errno : ENOMEM;
      rte_mempool_free(pkt);
      return unexpected(e);
    }
    return std::unique_ptr<PacketPool>(std::make_unique<dpdk_detail::DpdkPool>(pkt, ext, cfg.data_room));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

}  // namespace xenpath
