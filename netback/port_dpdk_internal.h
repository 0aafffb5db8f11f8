// Private to the DPDK adapter (port_dpdk*.cc, the only files that include
// rte_*.h): what its translation units share. Nothing outside the adapter
// includes this header.
//
// A PacketBuf* is an rte_mbuf* (the head of a chain); mb()/pb() only ever
// round-trip that pointer.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>

#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "common/result.h"
#include "netback/net_offload.h"
#include "netback/port.h"
#include "netback/port_dpdk.h"

namespace xenpath::dpdk_detail {

inline rte_mbuf* mb(PacketBuf* p) noexcept { return reinterpret_cast<rte_mbuf*>(p); }
inline const rte_mbuf* mb(const PacketBuf* p) noexcept { return reinterpret_cast<const rte_mbuf*>(p); }
inline PacketBuf* pb(rte_mbuf* m) noexcept { return reinterpret_cast<PacketBuf*>(m); }

inline constexpr uint64_t kTxMetaMask =
    RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IPV6 | RTE_MBUF_F_TX_IP_CKSUM | RTE_MBUF_F_TX_L4_MASK | RTE_MBUF_F_TX_TCP_SEG;
inline constexpr uint64_t kRxMetaMask = RTE_MBUF_F_RX_L4_CKSUM_MASK | RTE_MBUF_F_RX_IP_CKSUM_MASK | RTE_MBUF_F_RX_LRO;

// PacketMeta::kHashL4 rides in a dynamic mbuf flag (registered once by
// DpdkEnv::init; 0 when that failed, and L4 hashes then read back as L3,
// which is what a consumer may always assume of an L4 hash). The hash
// itself is an RSS hash (RTE_MBUF_F_RX_RSS_HASH, hash.rss): what an mbuf
// peer such as net_ring passes through untouched and what a NIC's receive
// fills in.
extern std::atomic<uint64_t> g_hash_l4_flag;

// The first segment may be written only when we own its bytes alone: not
// external (a guest page), not indirect, not shared with a clone.
inline bool head_writable(const rte_mbuf* m) noexcept { return RTE_MBUF_DIRECT(m) && rte_mbuf_refcnt_read(m) == 1; }

// offload::l3_view over an mbuf's first segment and its TX metadata.
inline bool l3_view(rte_mbuf* m, offload::L3View& v) noexcept {
  return offload::l3_view({rte_pktmbuf_mtod(m, uint8_t*), m->data_len}, m->pkt_len,
                          (m->ol_flags & RTE_MBUF_F_TX_IPV4) != 0, (m->ol_flags & RTE_MBUF_F_TX_IPV6) != 0, m->l2_len,
                          m->l3_len, v);
}

// offload::raw_sum of packet bytes [off, off + len) across the chain.
bool raw_sum(const rte_mbuf* m, uint32_t off, uint32_t len, uint16_t& out) noexcept;
// Software checksums for the pending TX bits `do_ip`/`do_l4` select; clears them.
bool sw_checksums(rte_mbuf* m, bool do_ip, bool do_l4) noexcept;
// Hardware offload wants the IPv4 checksum zeroed and the pseudo-header sum
// (without length for TSO) in the L4 field.
bool hw_checksum_prepare(rte_mbuf* m, bool ip, bool l4) noexcept;

// A received frame whose sender left work undone -- an L4 checksum in
// Linux's CHECKSUM_PARTIAL form (RX_L4_CKSUM_NONE: virtio's NEEDS_CSUM) or
// a whole GSO packet (RX_LRO with tso_segsz: virtio's gso_type, the host
// kernel's TSO skb) -- restated as the pending transmit work PacketMeta
// describes (kL4CsumPending, kSegment with mss), with the header lengths
// parsed, so it reaches a guest as csum_blank and a GSO extra, or another
// port as TSO; a GSO packet's TCP field is rewritten in Linux's partial
// form (with the L4 length). Other frames are left alone. False: the frame cannot be
// described (not TCP/UDP over IP, headers beyond the first segment, GSO
// without TCP or size): the caller drops it, as Linux drops a bad
// virtio_net_hdr.
bool rx_offload_to_pending(rte_mbuf* m) noexcept;

// "<prefix>_<what><n>": rte_mempool/rte_ring names are unique and short.
std::string unique_name(const std::string& prefix, const char* what);

// Owned by the control thread that created it; allocation and freeing of its
// buffers are thread-safe (DPDK mempools, multi-producer/consumer). Touches
// no guest memory itself; external segments reference guest pages.
class DpdkPool final : public PacketPool {
 public:
  DpdkPool(rte_mempool* pkt, rte_mempool* ext, uint16_t data_room) noexcept
      : pkt_(pkt), ext_(ext), data_room_(data_room) {}
  ~DpdkPool() override;

  PacketBuf* alloc() noexcept override { return pb(rte_pktmbuf_alloc(pkt_)); }
  size_t alloc_bulk(std::span<PacketBuf*> out) noexcept override;
  bool append_copy(PacketBuf* p, std::span<const std::byte> bytes) noexcept override;
  std::span<std::byte> append_owned(PacketBuf* p, size_t len) noexcept override;
  bool attach_external(PacketBuf* p, const ExtBuf& ext) noexcept override;
  Result<size_t> segment(PacketBuf* p, std::span<PacketBuf*> out) noexcept override;
  size_t data_room() const noexcept override { return data_room_; }
  size_t in_use() const noexcept override { return rte_mempool_in_use_count(pkt_) + rte_mempool_in_use_count(ext_); }

  rte_mempool* pkt_pool() const noexcept { return pkt_; }
  // A copy of a chained packet in one fresh segment (for ports that cannot
  // take chains); nullptr when it does not fit or the pool is empty.
  rte_mbuf* linearize(rte_mbuf* m) noexcept;

 private:
  rte_mempool* pkt_;
  rte_mempool* ext_;
  uint16_t data_room_;
};

}  // namespace xenpath::dpdk_detail
