// Packet offload arithmetic and rules, over plain bytes: the Internet
// checksum (RFC 1071) and the IPv4/TCP/UDP pseudo-header sums, the checks a
// packet's IP header must pass before its checksums or segmentation are
// done, the TCP flag rules of software segmentation, and the receive-side
// coalescing (GRO) grouping: which frames of a receive burst may become one
// packet. No packet buffers and no DPDK here: the DPDK adapter
// (port_dpdk_*.cc) hands these functions byte views of its mbufs and does
// the buffer work (chaining, librte_gro's merge, librte_gso) itself, so the
// rules can be unit-tested and fuzzed on their own.
//
// Sums are kept in memory order (the 16-bit words as they lie in memory,
// read natively), as rte_raw_cksum returns them: a value from here is
// stored into a checksum field with memcpy, never byte-swapped.
//
// Stateless; every function may run on any thread. Reads (and for the
// writers, writes) only the bytes it is given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "netback/port.h"

namespace xenpath::offload {

enum IpProto : uint8_t { kProtoTcp = 6, kProtoUdp = 17 };
enum TcpFlag : uint8_t { kTcpFlagFin = 0x01, kTcpFlagPsh = 0x08, kTcpFlagAck = 0x10, kTcpFlagCwr = 0x80 };
inline constexpr uint16_t kIpv4MinHeaderLen = 20;
inline constexpr uint16_t kIpv6HeaderLen = 40;

inline uint16_t load_be16(const uint8_t* p) noexcept { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline void store_be16(uint8_t* p, uint16_t v) noexcept {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline uint32_t load_be32(const uint8_t* p) noexcept {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | p[3];
}
inline void store_be32(uint8_t* p, uint32_t v) noexcept {
  store_be16(p, static_cast<uint16_t>(v >> 16));
  store_be16(p + 2, static_cast<uint16_t>(v));
}

// One's-complement fold of a 32-bit sum to 16 bits (not complemented).
inline uint16_t fold(uint32_t sum) noexcept {
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

// The folded, not complemented, one's-complement sum of `bytes` in memory
// order (what rte_raw_cksum returns; an odd tail byte is padded with zero).
uint16_t raw_sum(std::span<const uint8_t> bytes) noexcept;

// The same sum over a byte range given in pieces (a packet's segments).
// Not DPDK 22.11's rte_raw_cksum_mbuf: that truncates a piece's 32-bit
// partial sum to 16 bits before byte-swapping a piece that starts at an
// odd offset, which corrupts checksums over odd-length guest fragments.
class PieceSum {
 public:
  void add(std::span<const uint8_t> piece) noexcept;
  [[nodiscard]] uint16_t folded() const noexcept { return fold(sum_); }

 private:
  uint32_t sum_ = 0;
  uint64_t done_ = 0;
};

// The IPv4 header checksum to store (as is) in a header whose checksum
// field is zero, or 0 when checking a header whose field is filled in and
// right. `ip` holds at least (ip[0] & 0xf) * 4 bytes.
uint16_t ipv4_header_checksum(const uint8_t* ip) noexcept;

// The checksum-relevant view of a packet's IP header, validated against the
// metadata (l2/l3 lengths, IPv4 or IPv6) and the packet length.
struct L3View {
  uint8_t* ip = nullptr;
  bool v4 = false;
  uint32_t l4_off = 0;  // from the start of the packet
  uint32_t l4_len = 0;  // L4 header + payload, per the IP length fields
};
// `head` is the first segment's bytes (they must hold l2 + l3); `pkt_len`
// the whole packet's. False when the header is not what the metadata says
// or its lengths run past the packet.
bool l3_view(std::span<uint8_t> head, uint32_t pkt_len, bool v4, bool v6, uint32_t l2_len, uint32_t l3_len,
             L3View& out) noexcept;

// One's-complement sum of the TCP/UDP pseudo header, not complemented (the
// form hardware offload wants in the checksum field, Linux's
// CHECKSUM_PARTIAL form, and the start of a software checksum). `len` 0 for
// TSO, as DPDK's convention requires.
uint16_t pseudo_sum(const L3View& v, uint8_t proto, uint32_t len) noexcept;

// Offset of the checksum field within the L4 header.
inline uint32_t csum_field_off(uint8_t proto) noexcept { return proto == kProtoUdp ? 6 : 16; }

// The L4 checksum to store, from the payload's raw sum (checksum field
// zeroed) and the pseudo-header sum: RFC 768's 0 -> 0xffff for UDP.
uint16_t l4_checksum(uint16_t raw, uint16_t pseudo, uint8_t proto) noexcept;
// Whether a received L4 checksum checks out (its field filled in).
inline bool l4_checksum_ok(uint16_t raw, uint16_t pseudo) noexcept {
  return fold(static_cast<uint32_t>(raw) + pseudo) == 0xffff;
}

// Linux's GSO rules for the TCP flags of segment i of n: FIN and PSH only
// on the last, CWR only on the first.
uint8_t gso_segment_tcp_flags(uint8_t flags, size_t i, size_t n) noexcept;

// ------------------------------------------------------------ coalescing
//
// librte_gro does the chaining, but by itself it is not safe to hand a
// burst: it checks no checksum, not TTL/TOS/window, merges a frame that
// arrived late in front of an earlier one, and returns every merged packet
// before every frame it did not take, so a flow's PSH or FIN frame can
// overtake the segments around it. So the burst is first cut into groups
// here, each the in-sequence run of one flow that Linux GRO would merge
// (tcp_gro_receive / inet_gro_receive), and the library only ever sees one
// group at a time: one flow, every frame the next one in sequence, bounded
// so no merge fails for length.

inline constexpr size_t kGroBurstMax = 64;

enum class CsumState : uint8_t {
  kUnknown,  // not checked by the port: checked here, as Linux's GRO does
  kGood,
  kBad,
  kNone,  // the port says there is none to check
};

// What the adapter knows of one received frame (its header parser's
// lengths, its buffer state) before classification.
struct GroProbe {
  uint8_t* head = nullptr;  // the first segment's bytes
  uint32_t head_len = 0;
  uint32_t pkt_len = 0;
  uint16_t segments = 1;
  bool ipv4 = false;           // the parser found IPv4 ...
  bool ipv4_fragment = false;  // ... a fragment of it ...
  bool tcp = false;            // ... or TCP in it
  uint16_t l2_len = 0;
  uint16_t l3_len = 0;
  uint16_t l4_len = 0;
  bool offload_pending = false;  // transmit work still owed, or an LRO frame: never merged
  bool writable = false;         // the head and every segment are ours alone (the merge rewrites them)
  CsumState ip_csum = CsumState::kUnknown;
  CsumState l4_csum = CsumState::kUnknown;
  // Raw sum (raw_sum's form) of packet bytes [off, off + len), for an
  // L4 checksum the port did not check; false when the bytes are not there.
  bool (*sum)(const void* ctx, uint32_t off, uint32_t len, uint16_t& out) noexcept = nullptr;
  const void* sum_ctx = nullptr;
};

struct GroFrame {
  uint8_t* head = nullptr;
  uint8_t* ip = nullptr;  // set for TCP/IPv4 frames whose headers could be read
  uint8_t* tcp = nullptr;
  uint32_t seq = 0;
  uint32_t payload = 0;
  uint16_t ip_id = 0;
  bool eligible = false;     // may join a group
  bool psh = false;          // ACK|PSH: joins, then ends its group
  bool barrier = false;      // an IPv4 fragment, or TCP/IPv4 whose headers cannot be read: ends every group
  bool l4_verified = false;  // its TCP checksum was checked good here (the receiver need not)
  uint16_t l2_len = 0;
  uint16_t l4_len = 0;
  uint16_t segments = 1;
};

// Classifies one frame by Linux GRO's rules: only frames whose IPv4 and
// TCP checksums are good, flags exactly ACK or ACK|PSH, no IP options or
// fragments, a payload, no padding past the IP length.
GroFrame gro_classify(const GroProbe& p) noexcept;

struct GroGroup {
  uint32_t first = 0;  // burst index of the first frame
  uint32_t last = 0;   // burst index of the latest frame
  uint32_t frames = 0;
  uint32_t next_seq = 0;
  uint32_t ip_len = 0;  // IPv4 total length once merged
  uint32_t segs = 0;    // buffers once merged
  uint16_t mss = 0;
  uint16_t next_ip_id = 0;
  bool open = true;
  bool psh = false;  // the merged packet gets PSH back (its last frame had it)
};

// The grouping of one burst (at most kGroBurstMax frames): every frame in
// exactly one group; a group's frames chained in burst order through
// next_in (n = the end); groups listed in the order of their first frames.
struct GroPlan {
  uint32_t n = 0;
  uint32_t n_groups = 0;
  GroGroup groups[kGroBurstMax];
  uint32_t group_of[kGroBurstMax];  // frame -> group
  uint32_t next_in[kGroBurstMax];   // frame -> next frame of its group, or n
};

// Whether frame `f` may follow group `g` (whose first frame is `first`, of
// the same flow) in one merged packet.
bool gro_may_join(const GroGroup& g, const GroFrame& first, const GroFrame& f, const pkt::CoalesceOptions& o) noexcept;
// Groups frames[0..n) (n <= kGroBurstMax) into `out`.
void gro_plan(std::span<const GroFrame> frames, const pkt::CoalesceOptions& o, GroPlan& out) noexcept;

}  // namespace xenpath::offload
