// Fuzz target: receive-side coalescing (pkt::coalesce_tcp). Its input is a
// port's receive burst, which another guest on the same bridge controls, so
// it is hostile input. The fuzz input drives a burst of TCP/IPv4 frames built
// from one valid flow, then bent: sequence jumps, other flags, IP IDs,
// lengths, other protocols, corrupted or truncated bytes before or after the
// checksums are fixed, and the coalescing bounds. Whatever comes in, the
// burst may only shrink, never grow in bytes, keep its bounds, keep merged
// packets' metadata consistent, and give every buffer back to the pool.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "netback/port_dpdk.h"
#include "netback/port.h"
#include "sim/net/sim_frames.h"

namespace {

using namespace xenpath;
using namespace xenpath::sim::frames;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

class Reader {
 public:
  Reader(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  uint8_t byte() { return pos_ < n_ ? d_[pos_++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }
  [[nodiscard]] bool done() const { return pos_ >= n_; }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
};

PacketPool* pool() {
  static std::unique_ptr<PacketPool> p = [] {
    std::unique_ptr<PacketPool> out;
    DpdkEnvOptions o;
    o.memory_mb = 64;
    auto env = DpdkEnv::init(o);
    if (!env) return out;
    DpdkPoolConfig pc;
    pc.name = "fz";
    pc.packets = 1023;
    pc.attachments = 255;
    pc.cache = 0;  // exact in_use() for the leak check
    if (auto r = (*env)->create_pool(pc)) out = std::move(*r);
    return out;
  }();
  return p.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  PacketPool* pl = pool();
  check(pl != nullptr);  // no EAL is a broken environment, not a pass
  const size_t baseline = pl->in_use();
  Reader r(data, size);
  if (size < 2) return 0;

  pkt::CoalesceOptions opts;
  const uint8_t o = r.byte();
  if (o & 1) opts.max_len = 64 + r.u16();
  if (o & 2) opts.max_segments = static_cast<uint16_t>(1 + r.byte() % 64);

  const size_t nframes = 1 + r.byte() % 32;
  std::vector<PacketBuf*> burst;
  uint64_t bytes_in = 0;
  size_t longest_in = 0;
  uint16_t most_segs_in = 0;
  uint32_t seq = 1000;
  for (size_t i = 0; i < nframes && !r.done(); ++i) {
    // Three frames in four stay in the flow, so that runs form and merge;
    // the fourth is bent in the ways the next byte picks.
    const uint8_t sel = r.byte();
    const uint8_t ops = (sel & 3) != 0 ? static_cast<uint8_t>(sel & 0x80) : r.byte();
    FrameSpec s;
    s.payload = (ops & 0x80) ? r.u16() % 1600 : 1000;
    s.seq = (ops & 0x01) ? seq + r.u16() : seq;
    s.tcp_flags = (ops & 0x02) ? r.byte() : kTcpAck;
    s.ip_id = static_cast<uint16_t>(50 + i + ((ops & 0x04) ? r.byte() : 0));
    s.payload_seed = static_cast<uint8_t>(i);
    if (ops & 0x08) {
      if (r.byte() & 1) {
        s.v6 = true;
      } else {
        s.udp = true;
      }
    }
    std::vector<uint8_t> f = make_frame(s);
    const bool corrupt_after = (ops & 0x20) != 0;
    auto corrupt = [&] {
      const unsigned k = 1 + r.byte() % 4;
      for (unsigned j = 0; j < k; ++j) f[r.u16() % f.size()] = r.byte();
    };
    if ((ops & 0x10) && !corrupt_after) corrupt();
    // The test helper trusts the IPv4 lengths (corrupted ones may not fit).
    const size_t l3 = (f[kEthLen] & 0xfu) * 4u;
    const size_t ip_total = be16(f.data() + kEthLen + 2);
    if (!s.v6 && !s.udp && l3 >= kIp4Len && ip_total >= l3 + 18 && kEthLen + ip_total <= f.size()) {
      fix_tcp4_checksums(f);
    }
    if ((ops & 0x10) && corrupt_after) corrupt();
    if (ops & 0x40) f.resize(1 + r.u16() % f.size());
    seq = s.seq + static_cast<uint32_t>(s.payload);

    PacketBuf* p = pl->alloc();
    check(p != nullptr);
    check(pl->append_copy(p, {reinterpret_cast<const std::byte*>(f.data()), f.size()}));
    bytes_in += pkt::length(p);
    longest_in = std::max<size_t>(longest_in, pkt::length(p));
    most_segs_in = std::max(most_segs_in, pkt::segment_count(p));
    burst.push_back(p);
  }

  pkt::CoalesceStats st;
  const size_t n = pkt::coalesce_tcp(burst, opts, &st);
  check(n <= burst.size());
  check(burst.empty() || n >= 1);
  check(st.merged_frames >= 2 * st.merged_packets);
  check(burst.size() - n == st.merged_frames - st.merged_packets);
  uint64_t bytes_out = 0;
  for (size_t i = 0; i < n; ++i) {
    PacketBuf* p = burst[i];
    check(p != nullptr);
    const uint32_t len = pkt::length(p);
    bytes_out += len;
    check(len <= std::max<size_t>(opts.max_len, longest_in));
    check(pkt::segment_count(p) <= std::max(opts.max_segments, most_segs_in));
    std::vector<PacketSegment> segs(pkt::segment_count(p));
    check(pkt::segments(p, segs) == segs.size());
    uint64_t sum = 0;
    for (const auto& sg : segs) sum += sg.len;
    check(sum == len);
    const PacketMeta m = pkt::meta(p);
    if (m.has(PacketMeta::kSegment)) {
      // A merged packet: TCP/IPv4 with its headers, and more than one
      // segment's worth of payload.
      check(m.has(PacketMeta::kIpv4 | PacketMeta::kTcp));
      check(m.mss > 0);
      check(len > m.header_len() + m.mss);
    }
  }
  check(bytes_out <= bytes_in);
  pkt::free_bulk({burst.data(), n});
  check(pl->in_use() == baseline);
  return 0;
}
