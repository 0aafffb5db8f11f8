// PacketPort / PacketPool / PacketBuf: the packet I/O netback needs, without
// DPDK types. The only implementation is the DPDK adapter (port_dpdk.h and
// port_dpdk*.cc, the one place that includes rte_*.h); netif code and tests
// see only this.
//
// A packet is a `PacketBuf*`: an opaque handle to a chain of segments (a DPDK
// mbuf chain underneath). The handle has one owner at a time; ownership moves
// with tx_burst (for the packets the port took) and rx_burst (to the caller).
// Segments either own their bytes (allocated from a PacketPool, copied in) or
// reference external memory — a grant-mapped guest page — that is released
// through a callback when the last reference to it goes, on whatever thread
// frees the last packet referring to it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/result.h"

namespace xenpath {

struct PacketBuf;  // opaque; only the adapter knows what it is

// Offload metadata, the project's equivalent of an mbuf's ol_flags and
// l2/l3/l4 lengths. The same bits describe a packet in both directions:
// "pending" bits say work that is still owed to the packet (a checksum not
// yet computed, a segmentation not yet done), "verified"/"bad" bits record
// what a receiving port already checked.
struct PacketMeta {
  enum Flag : uint32_t {
    kIpv4 = 1u << 0,  // L3 is IPv4 (l2_len/l3_len describe it)
    kIpv6 = 1u << 1,  // L3 is IPv6; l3_len includes extension headers
    kTcp = 1u << 2,   // L4 protocol
    kUdp = 1u << 3,
    kIpCsumPending = 1u << 4,   // IPv4 header checksum still to be written
    kL4CsumPending = 1u << 5,   // TCP/UDP checksum still to be written (netif
                                // csum_blank, Linux CHECKSUM_PARTIAL)
    kSegment = 1u << 6,         // TSO/GSO: to be cut into `mss`-byte TCP segments
    kL4CsumVerified = 1u << 8,  // received with a checksum checked good (netif data_validated)
    kL4CsumBad = 1u << 9,       // received with a checksum checked bad
    kIpCsumBad = 1u << 10,
  };
  uint32_t flags = 0;
  uint16_t l2_len = 0;  // Ethernet (+VLAN) header
  uint16_t l3_len = 0;  // IP header incl. options / IPv6 extension headers
  uint16_t l4_len = 0;  // TCP header incl. options, or 8 for UDP
  uint16_t mss = 0;     // TCP payload bytes per segment when kSegment
  // A flow hash that travels with the packet (Linux's skb->hash): a guest's
  // XEN_NETIF_EXTRA_TYPE_HASH on TX, a NIC's RSS hash on receive. Which
  // fields it covers is all a consumer may assume about it (Linux's
  // PKT_HASH_TYPE_L3/L4); it is opaque otherwise, and guest-chosen when it
  // came from a guest, so netback never hands it to another guest: a VIF
  // with a Toeplitz hash configuration recomputes with its own key (Linux
  // xenvif_set_skb_hash overwrites skb->hash the same way).
  enum HashType : uint8_t {
    kHashNone = 0,
    kHashL3 = 1,  // addresses only
    kHashL4 = 2,  // addresses and ports
  };
  uint8_t hash_type = kHashNone;
  uint32_t hash = 0;  // meaningful when hash_type != kHashNone

  [[nodiscard]] bool has(uint32_t f) const noexcept { return (flags & f) == f; }
  [[nodiscard]] uint32_t header_len() const noexcept { return static_cast<uint32_t>(l2_len) + l3_len + l4_len; }
};

// A read-only view of one segment of a packet.
struct PacketSegment {
  const std::byte* data = nullptr;
  uint32_t len = 0;
};

// Called once when the last reference to an external buffer is gone. Runs on
// the thread that frees that reference (a port's TX completion, a peer's
// receive path...), so it must only queue work (e.g. the slot for a batched
// unmap) to the buffer's owner, never unmap or touch the owner's state.
using ExtFreeFn = void (*)(void* addr, void* opaque);

// Storage the adapter needs per attached external buffer (DPDK's
// rte_mbuf_ext_shared_info: the callback and a reference count). The caller
// owns it — typically inside its per-slot bookkeeping — and must keep it alive
// and unmoved until `free_fn` ran; that ties its lifetime to the buffer's
// rather than to any one packet (clones and GSO segments share it).
struct ExtBufShared {
  alignas(8) std::byte storage[32];
};

struct ExtBuf {
  void* addr = nullptr;            // first byte of the attached range
  uint16_t len = 0;                // bytes, 1..65535 (a netif slot is within a page)
  ExtBufShared* shared = nullptr;  // caller-owned, see above
  ExtFreeFn free_fn = nullptr;
  void* opaque = nullptr;  // handed back to free_fn
};

// Operations on a packet owned by the calling thread. None allocates.
namespace pkt {

void free(PacketBuf* p) noexcept;  // null is a no-op
void free_bulk(std::span<PacketBuf* const> ps) noexcept;
[[nodiscard]] uint32_t length(const PacketBuf* p) noexcept;  // all segments
[[nodiscard]] uint16_t segment_count(const PacketBuf* p) noexcept;
// The first `out.size()` segments (empty ones included); returns how many
// were written. A packet has at most 65535 segments (DPDK's nb_segs).
size_t segments(const PacketBuf* p, std::span<PacketSegment> out) noexcept;
// Copies bytes [offset, offset + out.size()) of the packet; returns the count
// copied (short when the packet ends first).
size_t copy_out(const PacketBuf* p, size_t offset, std::span<std::byte> out) noexcept;
// Extends the last segment by `len` bytes of its tailroom and returns them
// for the caller to fill (e.g. as a grant-copy destination). Empty when the
// last segment has less room or is external.
std::span<std::byte> append_room(PacketBuf* p, size_t len) noexcept;
// Bytes of tailroom left in the last segment (0 when external).
[[nodiscard]] size_t tailroom(const PacketBuf* p) noexcept;
// Drops `len` bytes from the end of the packet (a short grant copy).
bool trim(PacketBuf* p, size_t len) noexcept;

[[nodiscard]] PacketMeta meta(const PacketBuf* p) noexcept;
// Stores the metadata for the next port. kSegment implies both checksums
// pending. False (nothing changed) when it is inconsistent (IPv4 and IPv6,
// TCP and UDP, a segmentation without TCP/mss, a pending checksum without
// its protocol) or a length does not fit (l2 < 128, l3 < 512, l4 < 256).
bool set_meta(PacketBuf* p, const PacketMeta& m) noexcept;
// Fills l2/l3/l4 lengths and the kIpv4/kIpv6/kTcp/kUdp bits from the packet's
// headers (Ethernet, VLAN/QinQ, IPv4 options, IPv6 extension headers), keeping
// the other bits. False when it is not TCP/UDP over IP or the headers are
// not all in the first segment (which the checksum and segmentation code
// require; netback copies at least the headers into it).
bool parse_headers(PacketBuf* p, PacketMeta& m) noexcept;
// Moves bytes from the following segments into the first one's tailroom
// until it holds the first `len` bytes (or the whole packet when shorter),
// dropping segments it empties (an external one's free callback runs when
// its last reference goes). For headers longer than what was copied into
// the head (Linux pulls more than XEN_NETBACK_TX_COPY_LEN the same way).
// False (packet unchanged or partly pulled, still valid) when the first
// segment is not owned/writable or lacks the room.
bool pull_up(PacketBuf* p, size_t len) noexcept;
// Computes the checksums `meta` says are pending, in software, and clears
// those bits (with `l4` false only the IPv4 header's). Headers must be in
// the (writable, owned) first segment. False (packet unchanged) when the
// metadata does not describe the packet.
bool complete_checksums(PacketBuf* p, bool l4 = true) noexcept;
// For a packet whose L4 checksum stays pending (handed to a guest with
// csum_blank): writes the pseudo-header sum with the L4 length into the
// checksum field, the form Linux CHECKSUM_PARTIAL (and checksum offload)
// expects, e.g. after segmentation changed the lengths. The bit stays set.
bool prepare_partial_checksum(PacketBuf* p) noexcept;

// Receive-side coalescing (GRO) of one receive burst, for a receiver that
// takes GSO packets (a frontend with feature-gso-tcpv4, csum offload and sg).
struct CoalesceOptions {
  // Largest merged frame, L2 header included: 64 KiB, what kernel netback
  // hands a guest at most (GSO_MAX_SIZE) and within 17 of netfront's 18 slots.
  uint32_t max_len = 65536;
  // Most segments (buffers) a merged packet may chain: the RX path copies
  // a packet's segments in one go and drops longer chains.
  uint16_t max_segments = 64;
};
struct CoalesceStats {
  uint32_t merged_packets = 0;  // GSO packets built
  uint32_t merged_frames = 0;   // received frames they hold
};
// Merges consecutive in-sequence TCP/IPv4 segments of one flow from
// `pkts` (a port's receive burst, in arrival order) into one packet per run:
// headers of the first, payloads chained (the tail frames' headers
// stripped), IPv4 total length updated, metadata kIpv4|kTcp|kSegment with
// mss = the first frame's payload length, and the TCP checksum field in
// Linux's CHECKSUM_PARTIAL form (pseudo-header sum with the L4 length), so
// a guest gets it with csum_blank|data_validated and a GSO extra. Linux
// GRO's rules (tcp_gro_receive/inet_gro_receive): only frames whose IPv4
// and TCP checksums are good (verified by the port, else checked here in
// software), flags exactly ACK, no IP options or fragments, the same
// addresses, ports, ack, window, TOS, TTL, DF and TCP options; a frame
// longer than the first one's payload starts a new packet, a shorter one
// ends its packet; bounded by `opts`. Every other frame passes unchanged
// (one checked good here gains kL4CsumVerified). Order is kept within every
// flow; a merged packet takes the place of its first frame, so frames of
// other flows may move behind it (as Linux GRO reorders across flows), but
// nothing moves past an IPv4 fragment (it may belong to any flow).
// Packets are rewritten in place; returns the new count (<= pkts.size()).
// TCP/IPv6 is not merged (DPDK 22.11's librte_gro has no TCP/IPv6).
size_t coalesce_tcp(std::span<PacketBuf*> pkts, const CoalesceOptions& opts = {},
                    CoalesceStats* stats = nullptr) noexcept;

}  // namespace pkt

// Where packets and their segments come from. Allocation may happen on any
// thread (the adapter's pools are thread-safe); a packet, once allocated, is
// owned by one thread at a time.
class PacketPool {
 public:
  virtual ~PacketPool() = default;

  // An empty packet of one owned segment with `data_room()` bytes of tailroom.
  virtual PacketBuf* alloc() noexcept = 0;
  // All or nothing: fills `out` completely or returns 0.
  virtual size_t alloc_bulk(std::span<PacketBuf*> out) noexcept = 0;
  // Appends a copy of `bytes`, chaining new segments from this pool when the
  // last one is full. False (packet unchanged) when the pool is out of buffers.
  virtual bool append_copy(PacketBuf* p, std::span<const std::byte> bytes) noexcept = 0;
  // Extends the packet by `len` (<= data_room()) bytes the caller fills
  // (e.g. a grant-copy destination): in the last segment when it is owned
  // and has the room, else in a new segment from this pool. Empty when the
  // pool is out of buffers or the packet has the maximum segment count.
  virtual std::span<std::byte> append_owned(PacketBuf* p, size_t len) noexcept = 0;
  // Appends `ext` as a new segment referencing external memory. On success
  // `ext.free_fn` will run exactly once, when no packet refers to the memory
  // any more; on failure (false: pool empty, too many segments, bad
  // arguments) it never runs and the caller still owns the memory.
  virtual bool attach_external(PacketBuf* p, const ExtBuf& ext) noexcept = 0;
  // Software segmentation (GSO) of a kSegment packet into at most out.size()
  // packets of l2+l3+l4 headers + mss payload, with IP lengths/ids and TCP
  // sequence numbers/flags fixed up and checksums still pending (the
  // segments carry kL4CsumPending and, for IPv4, kIpCsumPending). The
  // segments reference the input's payload, so the caller frees `p`
  // afterwards either way. Returns the segment count; EINVAL when `p` is not
  // a segmentable TCP packet or needs more than out.size() segments, ENOMEM
  // when the pool ran out.
  virtual Result<size_t> segment(PacketBuf* p, std::span<PacketBuf*> out) noexcept = 0;

  // Tailroom of a fresh packet.
  [[nodiscard]] virtual size_t data_room() const noexcept = 0;
  // Buffers currently allocated (packets and segments), for leak checks.
  [[nodiscard]] virtual size_t in_use() const noexcept = 0;
};

struct MacAddr {
  std::array<uint8_t, 6> bytes{};
  [[nodiscard]] std::string str() const;
  friend bool operator==(const MacAddr&, const MacAddr&) = default;
};

// What a port does in hardware (or, for in-process peers, passes through).
// The adapter fills the gaps in software: a kSegment packet on a port
// without TSO is segmented, a pending checksum on a port without checksum
// offload is computed, so callers may always hand over packets with pending
// work.
struct PortCaps {
  bool tso = false;      // TCP segmentation (IPv4 and IPv6)
  bool ip_csum = false;  // IPv4 header checksum
  bool l4_csum = false;  // TCP and UDP checksums
  bool rx_csum = false;  // received packets carry verified/bad bits, or a pending
                         // (partial) L4 checksum the sender left to the receiver
  // Received TCP may come as whole GSO packets (kSegment with mss and the
  // checksum pending: a virtio device's host TSO skbs), so a receiver that
  // takes GSO gets them as they are, with no software GRO.
  bool rx_gso = false;
  bool multi_segment = false;  // chained packets accepted (else the adapter copies a
                               // chained packet into one segment when it fits)
  // Segments referencing external memory may be handed to this port: true
  // for CPU-copying software ports; false for ports whose device would need
  // the memory DMA-mapped (physical NICs), where callers must copy instead.
  bool external_buffers = false;
  uint32_t mtu = 0;
};

struct LinkStatus {
  bool up = false;
  uint32_t speed_mbps = 0;
  bool full_duplex = false;
};

struct PortQueueStats {
  uint64_t rx_packets = 0;
  uint64_t rx_bytes = 0;
  uint64_t rx_dropped = 0;  // received frames with offload metadata that does not describe them
  uint64_t tx_packets = 0;  // packets the device accepted (after segmentation)
  uint64_t tx_bytes = 0;
  uint64_t tx_dropped = 0;      // caller packets dropped (unusable metadata, no buffers)
  uint64_t tx_gso_packets = 0;  // caller packets segmented in software
  uint64_t tx_gso_segments = 0;
  uint64_t tx_sw_csum = 0;  // packets whose checksums were computed in software
};

// A network port with rx/tx queues. Control methods (everything but the
// bursts and stats) belong to the control thread that opened it; each queue
// belongs to one datapath thread at a time.
class PacketPort {
 public:
  virtual ~PacketPort() = default;

  [[nodiscard]] virtual const std::string& name() const noexcept = 0;
  // dom0's network interface carrying this port (the tap of net_tap or
  // virtio_user/vhost-net), which VifLink attaches to a bridge; empty when
  // there is none (in-process rings, a NIC).
  [[nodiscard]] virtual std::string_view kernel_interface() const noexcept { return {}; }
  [[nodiscard]] virtual uint16_t rx_queues() const noexcept = 0;
  [[nodiscard]] virtual uint16_t tx_queues() const noexcept = 0;

  // Up to out.size() received packets; the caller owns them.
  virtual size_t rx_burst(uint16_t queue, std::span<PacketBuf*> out) noexcept = 0;
  // Hands packets to the port in order; returns how many it took (it owns
  // those, sent or dropped-and-counted); the rest remain the caller's, to
  // retry later. Pending offload work is done here (in hardware when the
  // port can, else in software), so one caller packet may become many frames.
  virtual size_t tx_burst(uint16_t queue, std::span<PacketBuf* const> pkts) noexcept = 0;
  // Frames prepared but not yet accepted by the device (backpressure).
  [[nodiscard]] virtual size_t tx_pending(uint16_t queue) const noexcept = 0;
  // Receive wake-up: a descriptor that polls readable (level-triggered)
  // while `queue` has packets waiting, for ports whose driver has receive
  // interrupts (net_tap: its queue's tun fd); -1 when there is none and the
  // caller must poll. Owned by the port (never read or close it); valid
  // while the port is open.
  [[nodiscard]] virtual int rx_wait_fd(uint16_t /*queue*/) const noexcept { return -1; }

  [[nodiscard]] virtual PortCaps caps() const noexcept = 0;
  [[nodiscard]] virtual MacAddr mac() const noexcept = 0;
  [[nodiscard]] virtual LinkStatus link() const noexcept = 0;
  [[nodiscard]] virtual PortQueueStats stats(uint16_t queue) const noexcept = 0;
};

}  // namespace xenpath
