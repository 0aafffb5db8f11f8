// Fuzz target: receive-side coalescing (pkt::coalesce_tcp). Its input is a
// port's receive burst, which another guest on the same bridge controls, so
// it is hostile input. The fuzz input drives a burst of TCP/IPv4 frames built
// from one valid flow, then bent: sequence jumps, other flags, IP IDs,
// lengths, other protocols, corrupted or truncated bytes before or after the
// checksums are fixed, and the coalescing bounds.
//
// Two checks per burst. The grouping (offload::gro_plan, pure, deterministic)
// must follow Linux GRO's rules: every frame in one group, a merged group one
// flow's in-sequence run of eligible frames, full-sized but for the last, PSH
// only last, nothing merged across an IPv4 fragment, within the bounds. The
// whole path through DPDK (pkt::coalesce_tcp) may only shrink the burst,
// never grow it in bytes, keep its bounds, keep merged packets' metadata
// consistent, and give every buffer back to the pool.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "netback/net_offload.h"
#include "netback/port.h"
#include "netback/port_dpdk.h"
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

bool sum_of(const void* ctx, uint32_t off, uint32_t len, uint16_t& out) noexcept {
  const auto& f = *static_cast<const std::vector<uint8_t>*>(ctx);
  if (static_cast<size_t>(off) + len > f.size()) return false;
  out = offload::raw_sum({f.data() + off, len});
  return true;
}

// An Ethernet/IPv4/TCP header parse of a (possibly bent) frame, standing in
// for the adapter's (DPDK's) parser.
offload::GroProbe probe(std::vector<uint8_t>& f) {
  offload::GroProbe p;
  p.head = f.data();
  p.head_len = p.pkt_len = static_cast<uint32_t>(f.size());
  p.l2_len = kEthLen;
  p.writable = true;
  p.sum = &sum_of;
  p.sum_ctx = &f;
  if (f.size() < kEthLen + kIp4Len || be16(f.data() + 12) != 0x0800) return p;
  const uint8_t* ip = f.data() + kEthLen;
  if ((ip[0] >> 4) != 4 || (ip[0] & 0xf) < 5) return p;
  p.ipv4 = true;
  p.l3_len = static_cast<uint16_t>((ip[0] & 0xf) * 4);
  if ((be16(ip + 6) & 0x3fff) != 0) {
    p.ipv4_fragment = true;
    return p;
  }
  const size_t l4 = kEthLen + p.l3_len;
  if (ip[9] != 6 || f.size() < l4 + kTcpLen) return p;
  p.tcp = true;
  p.l4_len = static_cast<uint16_t>((f[l4 + 12] >> 4) * 4);
  return p;
}

// The grouping of a burst against Linux GRO's rules.
void check_plan(std::vector<std::vector<uint8_t>>& frames, const pkt::CoalesceOptions& opts) {
  std::vector<offload::GroFrame> fr;
  for (auto& f : frames) fr.push_back(offload::gro_classify(probe(f)));
  offload::GroPlan plan;
  offload::gro_plan(fr, opts, plan);
  const uint32_t n = plan.n;
  check(n == fr.size());
  std::vector<int> seen(n, 0);
  uint32_t groups = 0;
  for (uint32_t i = 0; i < n; ++i) {
    check(plan.group_of[i] < plan.n_groups);
    const offload::GroGroup& g = plan.groups[plan.group_of[i]];
    if (g.first != i) continue;
    ++groups;
    uint32_t frames_in = 0;
    uint32_t prev = i;
    uint32_t len = 0;
    uint32_t segs = 0;
    for (uint32_t j = i; j < n; j = plan.next_in[j]) {
      check(plan.group_of[j] == plan.group_of[i]);
      check(j == i || j > prev);  // burst order
      ++seen[j];
      ++frames_in;
      segs += fr[j].segments;
      prev = j;
    }
    check(frames_in == g.frames);
    check(prev == g.last);
    if (g.frames == 1) continue;
    // A merged group: one flow's run, every frame eligible, in sequence.
    const offload::GroFrame& a = fr[i];
    uint32_t seq = a.seq;
    for (uint32_t j = i; j < n; j = plan.next_in[j]) {
      const offload::GroFrame& f = fr[j];
      check(f.eligible && !f.barrier);
      check(std::memcmp(a.ip + 12, f.ip + 12, 8) == 0 && std::memcmp(a.tcp, f.tcp, 4) == 0);
      check(f.seq == seq);
      seq += f.payload;
      len += f.payload;
      const bool last = j == g.last;
      check(last || f.payload == g.mss);  // only the last may be short
      check(last || !f.psh);              // PSH ends a group
      check(f.payload <= g.mss);
    }
    check(len == seq - a.seq);
    // Nothing merged across a fragment.
    for (uint32_t k = i; k <= g.last; ++k) check(!fr[k].barrier);
    check(a.l2_len + 20u + a.l4_len + len <= opts.max_len);
    check(segs <= opts.max_segments);
  }
  check(groups == plan.n_groups);
  for (uint32_t i = 0; i < n; ++i) check(seen[i] == 1);
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
  std::vector<std::vector<uint8_t>> frames;
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
    frames.push_back(f);

    PacketBuf* p = pl->alloc();
    check(p != nullptr);
    check(pl->append_copy(p, {reinterpret_cast<const std::byte*>(f.data()), f.size()}));
    bytes_in += pkt::length(p);
    longest_in = std::max<size_t>(longest_in, pkt::length(p));
    most_segs_in = std::max(most_segs_in, pkt::segment_count(p));
    burst.push_back(p);
  }

  check_plan(frames, opts);

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
