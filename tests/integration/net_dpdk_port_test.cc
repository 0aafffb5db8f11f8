// The DPDK adapter over virtual devices, EAL in-process without hugepages:
// net_ring loopback and back-to-back pairs, net_null, software GSO and
// checksums, external (guest-page) buffers and their free callbacks, and
// net_tap against the kernel when this machine allows it.
//
// EAL can be initialised once per process; every test here shares one
// environment (a function-local static) and leaves no port, pool buffer or
// pinned CPU behind, so other tests in this binary are undisturbed.
//
// Why one file of ~870 lines: its cases share the NetDpdk fixture (ports,
// pools, leak checks) and walk one adapter top to bottom (EAL, pools,
// packets, offloads, ports); split by topic, each part would carry the
// fixture again.
#include "netback/port_dpdk.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "sim/net/sim_frames.h"
#include "tests/fixtures/net_wire.h"

namespace xenpath {
namespace {

using namespace sim::frames;
using test::bytes_of;

DpdkEnv* test_env() { return test::test_dpdk(); }
std::string unique(const char* prefix) { return test::unique_port_name(prefix); }

// Stand-in for grant-mapped guest pages: page-aligned memory, one
// ExtBufShared and one free counter per page.
struct GuestPages {
  explicit GuestPages(size_t n)
      : mem(static_cast<std::byte*>(std::aligned_alloc(4096, n * 4096))), shared(n), frees(n) {}
  ~GuestPages() { std::free(mem); }
  std::byte* page(size_t i) { return mem + i * 4096; }
  static void on_free(void* addr, void* opaque) {
    auto* self = static_cast<GuestPages*>(opaque);
    const size_t i = static_cast<size_t>(static_cast<std::byte*>(addr) - self->mem) / 4096;
    self->frees[i].fetch_add(1);
    self->last_addr = addr;
  }
  // Attaches bytes [0, len) of page i at `offset`, filled with `src`.
  bool attach(PacketPool& pool, PacketBuf* p, size_t i, size_t offset, const uint8_t* src, size_t len) {
    std::memcpy(page(i) + offset, src, len);
    ExtBuf e;
    e.addr = page(i) + offset;
    e.len = static_cast<uint16_t>(len);
    e.shared = &shared[i];
    e.free_fn = &GuestPages::on_free;
    e.opaque = this;
    return pool.attach_external(p, e);
  }
  int total_frees() const {
    int t = 0;
    for (const auto& f : frees) t += f.load();
    return t;
  }
  std::byte* mem;
  std::vector<ExtBufShared> shared;
  std::vector<std::atomic<int>> frees;
  void* last_addr = nullptr;
};

class NetDpdk : public ::testing::Test {
 public:
  void SetUp() override {
    env_ = test_env();
    ASSERT_NE(env_, nullptr);
    DpdkPoolConfig pc;
    pc.name = "t";
    pc.packets = 2047;
    pc.attachments = 4095;
    pc.cache = 0;  // exact in_use() accounting for leak checks
    auto pool = env_->create_pool(pc);
    ASSERT_TRUE(pool) << error_string(pool.error());
    pool_ = std::move(*pool);
  }
  void TearDown() override {
    ports_.clear();
    if (pool_) {
      EXPECT_EQ(pool_->in_use(), 0u) << "packet buffers leaked";
    }
    pool_.reset();
  }

  PacketPort* open(DpdkPortConfig cfg) {
    auto p = env_->open_port(*pool_, cfg);
    EXPECT_TRUE(p) << cfg.devargs << ": " << error_string(p.error());
    if (!p) return nullptr;
    ports_.push_back(std::move(*p));
    return ports_.back().get();
  }
  // A port of virtual device `driver` (net_ring, net_null...) with a unique name.
  PacketPort* open_vdev(const std::string& driver, const char* prefix) {
    DpdkPortConfig cfg;
    cfg.devargs = driver + "_" + unique(prefix);
    return open(cfg);
  }
  std::pair<PacketPort*, PacketPort*> pair(DpdkPortConfig base = {}) {
    auto r = env_->open_ring_pair(*pool_, unique("p"), base);
    EXPECT_TRUE(r) << error_string(r.error());
    if (!r) return {nullptr, nullptr};
    ports_.push_back(std::move((*r)[0]));
    ports_.push_back(std::move((*r)[1]));
    return {ports_[ports_.size() - 2].get(), ports_.back().get()};
  }

  // A packet: the first `head` bytes of `frame` copied, the rest as external
  // chunks of `chunks` bytes on successive guest pages (at odd offsets so
  // nothing is accidentally aligned).
  PacketBuf* build(const std::vector<uint8_t>& frame, size_t head, const std::vector<size_t>& chunks,
                   GuestPages* pages = nullptr, size_t first_page = 0) {
    PacketBuf* p = pool_->alloc();
    EXPECT_NE(p, nullptr);
    EXPECT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(frame.data()), head}));
    size_t off = head;
    for (size_t i = 0; i < chunks.size(); ++i) {
      EXPECT_LE(chunks[i], 4096u - 3);
      EXPECT_TRUE(pages->attach(*pool_, p, first_page + i, 3, frame.data() + off, chunks[i]));
      off += chunks[i];
    }
    EXPECT_EQ(off, frame.size());
    return p;
  }

  // Receives until `n` packets arrived (bounded).
  std::vector<PacketBuf*> receive(PacketPort* port, size_t n) {
    std::vector<PacketBuf*> got;
    for (int spins = 0; got.size() < n && spins < 2000; ++spins) {
      PacketBuf* burst[64];
      const size_t k = port->rx_burst(0, burst);
      got.insert(got.end(), burst, burst + k);
      if (k == 0) std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    return got;
  }

  DpdkEnv* env_ = nullptr;
  std::unique_ptr<PacketPool> pool_;
  std::vector<std::unique_ptr<PacketPort>> ports_;
};

TEST(NetDpdkEnv, InitOnceKeepsCallerAffinity) {
  DpdkEnv* env = test_env();
  ASSERT_NE(env, nullptr);
  auto again = DpdkEnv::init();
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, env);
  EXPECT_EQ(DpdkEnv::get(), env);
  cpu_set_t now;
  CPU_ZERO(&now);
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof(now), &now), 0);
  EXPECT_TRUE(CPU_EQUAL(&now, &test::affinity_before_dpdk())) << "EAL left the calling thread pinned";
  const auto& a = env->eal_args();
  EXPECT_NE(std::find(a.begin(), a.end(), "--no-huge"), a.end());
  EXPECT_NE(std::find(a.begin(), a.end(), "--no-shconf"), a.end());
  EXPECT_NE(std::find(a.begin(), a.end(), "--no-pci"), a.end());
  EXPECT_EQ(std::find(a.begin(), a.end(), "--in-memory"), a.end());
}

TEST(NetDpdkEnv, DatapathThreadsRegisterForAnLcore) {
  DpdkEnv* env = test_env();
  ASSERT_NE(env, nullptr);
  std::atomic<bool> ok{false};
  std::thread t([&] {
    ok = env->register_thread().has_value();
    env->unregister_thread();
  });
  t.join();
  EXPECT_TRUE(ok.load());
}

TEST_F(NetDpdk, PacketOpsCopyTrimAppendAndMeta) {
  PacketBuf* p = pool_->alloc();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(pkt::tailroom(p), pool_->data_room());
  std::vector<uint8_t> data(5000);
  std::iota(data.begin(), data.end(), 0);
  ASSERT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(data.data()), data.size()}));
  EXPECT_EQ(pkt::length(p), 5000u);
  EXPECT_EQ(pkt::segment_count(p), 3);  // 2048 + 2048 + 904
  PacketSegment segs[4];
  ASSERT_EQ(pkt::segments(p, segs), 3u);
  EXPECT_EQ(segs[0].len + segs[1].len + segs[2].len, 5000u);
  std::vector<std::byte> mid(100);
  EXPECT_EQ(pkt::copy_out(p, 2000, mid), 100u);
  for (size_t i = 0; i < 100; ++i) EXPECT_EQ(static_cast<uint8_t>(mid[i]), data[2000 + i]);
  EXPECT_EQ(pkt::copy_out(p, 4990, mid), 10u);  // short at the end

  auto room = pkt::append_room(p, 16);
  ASSERT_EQ(room.size(), 16u);
  std::memset(room.data(), 0xab, 16);
  EXPECT_EQ(pkt::length(p), 5016u);
  EXPECT_TRUE(pkt::trim(p, 16 + 1000));  // drops into the second segment
  EXPECT_EQ(pkt::length(p), 4000u);
  EXPECT_EQ(pkt::segment_count(p), 2);
  EXPECT_EQ(bytes_of(p), std::vector<uint8_t>(data.begin(), data.begin() + 4000));
  EXPECT_FALSE(pkt::trim(p, 4001));

  const PacketMeta m = tso_meta(1400, true, 32);
  ASSERT_TRUE(pkt::set_meta(p, m));
  const PacketMeta back = pkt::meta(p);
  EXPECT_TRUE(back.has(PacketMeta::kIpv6 | PacketMeta::kTcp | PacketMeta::kSegment | PacketMeta::kL4CsumPending));
  EXPECT_FALSE(back.has(PacketMeta::kIpCsumPending));
  EXPECT_EQ(back.mss, 1400);
  EXPECT_EQ(back.header_len(), 86u);
  PacketMeta bad = m;
  bad.flags |= PacketMeta::kIpv4;
  EXPECT_FALSE(pkt::set_meta(p, bad));
  bad = m;
  bad.mss = 0;
  EXPECT_FALSE(pkt::set_meta(p, bad));
  bad = m;
  bad.flags = PacketMeta::kIpCsumPending | PacketMeta::kIpv6;
  EXPECT_FALSE(pkt::set_meta(p, bad));
  EXPECT_EQ(pkt::meta(p).mss, 1400) << "a rejected set_meta must change nothing";
  EXPECT_EQ(pkt::meta(p).hash_type, PacketMeta::kHashNone);

  // A flow hash, with which fields it covers; kHashNone clears it.
  PacketMeta h = m;
  h.hash_type = PacketMeta::kHashL4;
  h.hash = 0xa5a5f00d;
  ASSERT_TRUE(pkt::set_meta(p, h));
  EXPECT_EQ(pkt::meta(p).hash_type, PacketMeta::kHashL4);
  EXPECT_EQ(pkt::meta(p).hash, 0xa5a5f00du);
  EXPECT_EQ(pkt::meta(p).mss, 1400);
  h.hash_type = PacketMeta::kHashL3;
  h.hash = 7;
  ASSERT_TRUE(pkt::set_meta(p, h));
  EXPECT_EQ(pkt::meta(p).hash_type, PacketMeta::kHashL3);
  EXPECT_EQ(pkt::meta(p).hash, 7u);
  bad = h;
  bad.hash_type = 3;
  EXPECT_FALSE(pkt::set_meta(p, bad));
  EXPECT_EQ(pkt::meta(p).hash_type, PacketMeta::kHashL3) << "a rejected set_meta must change nothing";
  ASSERT_TRUE(pkt::set_meta(p, m));
  EXPECT_EQ(pkt::meta(p).hash_type, PacketMeta::kHashNone);
  pkt::free(p);
}

TEST_F(NetDpdk, ParseHeadersFindsLayerLengths) {
  for (bool v6 : {false, true}) {
    for (bool udp : {false, true}) {
      FrameSpec s;
      s.v6 = v6;
      s.udp = udp;
      s.payload = 100;
      const auto f = make_frame(s);
      PacketBuf* p = pool_->alloc();
      ASSERT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(f.data()), f.size()}));
      PacketMeta m;
      m.flags = PacketMeta::kL4CsumPending;
      ASSERT_TRUE(pkt::parse_headers(p, m));
      EXPECT_EQ(m.l2_len, kEthLen);
      EXPECT_EQ(m.l3_len, v6 ? kIp6Len : kIp4Len);
      EXPECT_EQ(m.l4_len, udp ? kUdpLen : kTcpLen);
      EXPECT_TRUE(m.has(v6 ? PacketMeta::kIpv6 : PacketMeta::kIpv4));
      EXPECT_TRUE(m.has(udp ? PacketMeta::kUdp : PacketMeta::kTcp));
      EXPECT_TRUE(m.has(PacketMeta::kL4CsumPending)) << "other bits are kept";
      pkt::free(p);
    }
  }
  // Headers not in the first segment: refused (checksumming needs them there).
  FrameSpec s;
  s.payload = 10;
  const auto f = make_frame(s);
  GuestPages pages(1);
  PacketBuf* p = build(f, 20, {f.size() - 20}, &pages);
  PacketMeta m;
  EXPECT_FALSE(pkt::parse_headers(p, m));
  pkt::free(p);
  EXPECT_EQ(pages.total_frees(), 1);
}

TEST_F(NetDpdk, RingLoopbackSingleMultiSegmentAndExternal) {
  PacketPort* port = open_vdev("net_ring", "l");
  ASSERT_NE(port, nullptr);
  EXPECT_TRUE(port->caps().multi_segment);
  EXPECT_TRUE(port->caps().external_buffers);
  EXPECT_TRUE(port->link().up);

  GuestPages pages(8);
  std::vector<std::vector<uint8_t>> sent;
  std::vector<PacketBuf*> tx;
  for (size_t payload : {64u, 1400u, 6000u}) {  // one segment, one, three
    FrameSpec s;
    s.payload = payload;
    s.payload_seed = static_cast<uint8_t>(payload);
    sent.push_back(make_frame(s));
    PacketBuf* p = pool_->alloc();
    ASSERT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(sent.back().data()), sent.back().size()}));
    tx.push_back(p);
  }
  {  // 128 bytes copied, then three guest pages of odd sizes
    FrameSpec s;
    s.payload = 128 - 54 + 4000 + 1 + 999;
    sent.push_back(make_frame(s));
    tx.push_back(build(sent.back(), 128, {4000, 1, 999}, &pages, 0));
  }
  ASSERT_EQ(port->tx_burst(0, tx), tx.size());
  EXPECT_EQ(pages.total_frees(), 0) << "the ring still holds the packet";
  auto rx = receive(port, tx.size());
  ASSERT_EQ(rx.size(), tx.size());
  for (size_t i = 0; i < rx.size(); ++i) EXPECT_EQ(bytes_of(rx[i]), sent[i]) << i;
  EXPECT_EQ(pkt::segment_count(rx[3]), 4);
  EXPECT_EQ(pages.total_frees(), 0) << "freed before the receiver let go";
  pkt::free_bulk(rx);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(pages.frees[i].load(), 1) << "page " << i;
  EXPECT_EQ(pages.frees[3].load(), 0);
  const auto st = port->stats(0);
  EXPECT_EQ(st.tx_packets, 4u);
  EXPECT_EQ(st.rx_packets, 4u);
  EXPECT_EQ(st.tx_bytes, st.rx_bytes);
}

TEST_F(NetDpdk, RingPairCarriesBothWaysAndBackpressures) {
  DpdkPortConfig base;
  base.gso_max_segments = 64;  // a 192-frame backlog
  auto [a, b] = pair(base);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a->name(), b->name());
  // More than the 1024-slot ring plus the adapter's backlog can hold.
  std::vector<PacketBuf*> tx(1500);
  for (size_t i = 0; i < tx.size(); ++i) {
    FrameSpec s;
    s.udp = true;
    s.payload = 18;
    s.ip_id = static_cast<uint16_t>(i);
    auto f = make_frame(s);
    tx[i] = pool_->alloc();
    ASSERT_NE(tx[i], nullptr);
    ASSERT_TRUE(pool_->append_copy(tx[i], {reinterpret_cast<const std::byte*>(f.data()), f.size()}));
  }
  size_t taken = a->tx_burst(0, tx);
  EXPECT_LT(taken, tx.size()) << "no backpressure";
  EXPECT_GE(taken, 1023u + 64u) << "ring (1023) plus backlog";
  EXPECT_GT(a->tx_pending(0), 0u);
  std::vector<PacketBuf*> got;
  for (int round = 0; round < 100 && got.size() < tx.size(); ++round) {
    PacketBuf* burst[64];
    for (size_t k; (k = b->rx_burst(0, burst)) > 0;) got.insert(got.end(), burst, burst + k);
    if (taken < tx.size()) taken += a->tx_burst(0, std::span<PacketBuf* const>(tx).subspan(taken));
    else a->tx_burst(0, {});  // flushes the backlog
  }
  ASSERT_EQ(got.size(), tx.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const auto f = bytes_of(got[i]);
    ASSERT_EQ(be16(f.data() + kEthLen + 4), static_cast<uint16_t>(i)) << "reordered at " << i;
  }
  pkt::free_bulk(got);
  // And the other way.
  FrameSpec s;
  s.payload = 300;
  const auto f = make_frame(s);
  PacketBuf* p = pool_->alloc();
  ASSERT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(f.data()), f.size()}));
  ASSERT_EQ(b->tx_burst(0, {&p, 1}), 1u);
  auto back = receive(a, 1);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(bytes_of(back[0]), f);
  pkt::free_bulk(back);
}

TEST_F(NetDpdk, NullPortTakesEverythingAndReleasesGuestPages) {
  PacketPort* port = open_vdev("net_null", "n");
  ASSERT_NE(port, nullptr);
  // net_null declares no multi-segment support: chained packets are copied
  // into one buffer, which releases the guest pages at once.
  EXPECT_FALSE(port->caps().multi_segment);
  GuestPages pages(66);
  std::vector<PacketBuf*> tx;
  FrameSpec s;
  s.payload = 128 - 54 + 2 * 600;
  const auto f = make_frame(s);
  for (size_t i = 0; i < 32; ++i) tx.push_back(build(f, 128, {600, 600}, &pages, 2 * i));
  // One chained packet too big for a single buffer: dropped, pages released.
  FrameSpec big;
  big.payload = 128 - 54 + 2 * 1500;
  const auto bf = make_frame(big);
  tx.push_back(build(bf, 128, {1500, 1500}, &pages, 64));
  ASSERT_EQ(port->tx_burst(0, tx), tx.size());
  EXPECT_EQ(port->tx_pending(0), 0u);
  EXPECT_EQ(port->stats(0).tx_packets, 32u);
  EXPECT_EQ(port->stats(0).tx_bytes, 32u * f.size());
  EXPECT_EQ(port->stats(0).tx_dropped, 1u);
  for (size_t i = 0; i < 66; ++i) EXPECT_EQ(pages.frees[i].load(), 1) << "page " << i;
}

// A 64 KiB TCP packet (the largest IP allows) from a port without TSO:
// segmented in software into MSS-sized frames with valid checksums, in order,
// with Linux's flag rules, and the guest pages released once all are gone.
void gso_roundtrip(NetDpdk* t, bool v6) {
  auto [a, b] = t->pair();
  ASSERT_NE(a, nullptr);
  EXPECT_FALSE(a->caps().tso);
  FrameSpec s;
  s.v6 = v6;
  s.tcp_flags = kTcpAck | kTcpPsh | kTcpCwr | kTcpFin;
  s.seq = 0xfffff000u;  // wraps during the packet
  const size_t hdr = header_len(s);
  // The largest IP allows: total length (v4) / payload length (v6) 65535.
  s.payload = 65535 - kTcpLen - (v6 ? 0 : kIp4Len);
  const auto frame = make_frame(s);
  // 128 bytes copied, the rest on guest pages (4093 bytes each, the last shorter).
  std::vector<size_t> chunks;
  for (size_t left = frame.size() - 128; left > 0;) {
    chunks.push_back(std::min<size_t>(left, 4093));
    left -= chunks.back();
  }
  GuestPages pages(chunks.size());
  PacketBuf* p = t->build(frame, 128, chunks, &pages);
  const uint16_t mss = 1448;
  PacketMeta m;
  m.flags = (v6 ? PacketMeta::kIpv6 : PacketMeta::kIpv4) | PacketMeta::kTcp | PacketMeta::kSegment |
            PacketMeta::kL4CsumPending;
  m.l2_len = kEthLen;
  m.l3_len = v6 ? kIp6Len : kIp4Len;
  m.l4_len = kTcpLen;
  m.mss = mss;
  ASSERT_TRUE(pkt::set_meta(p, m));
  ASSERT_EQ(a->tx_burst(0, {&p, 1}), 1u);
  const size_t expect = (s.payload + mss - 1) / mss;
  auto rx = t->receive(b, expect);
  ASSERT_EQ(rx.size(), expect);
  EXPECT_EQ(a->stats(0).tx_gso_packets, 1u);
  EXPECT_EQ(a->stats(0).tx_gso_segments, expect);
  std::vector<uint8_t> payload;
  for (size_t i = 0; i < rx.size(); ++i) {
    const auto f = bytes_of(rx[i]);
    const ParsedFrame pf = parse_frame(f);
    ASSERT_TRUE(pf.error.empty()) << "segment " << i << ": " << pf.error;
    EXPECT_EQ(pf.v6, v6);
    EXPECT_LE(f.size(), hdr + mss);
    EXPECT_EQ(pf.seq, static_cast<uint32_t>(s.seq + payload.size())) << i;
    const bool last = i + 1 == rx.size();
    EXPECT_EQ((pf.tcp_flags & (kTcpFin | kTcpPsh)) != 0, last) << i;
    EXPECT_EQ((pf.tcp_flags & kTcpCwr) != 0, i == 0) << i;
    EXPECT_TRUE(pf.tcp_flags & kTcpAck);
    if (!v6) {
      EXPECT_EQ(pf.ip_id, static_cast<uint16_t>(s.ip_id + i)) << i;
    }
    payload.insert(payload.end(), pf.payload.begin(), pf.payload.end());
  }
  EXPECT_EQ(payload, std::vector<uint8_t>(frame.begin() + static_cast<long>(hdr), frame.end()));
  // Every guest page is still referenced by some segment until they go.
  EXPECT_EQ(pages.total_frees(), 0);
  pkt::free_bulk(std::span<PacketBuf* const>(rx).first(rx.size() - 1));
  EXPECT_LT(pages.total_frees(), static_cast<int>(chunks.size()));
  pkt::free(rx.back());
  for (size_t i = 0; i < chunks.size(); ++i) EXPECT_EQ(pages.frees[i].load(), 1) << "page " << i;
}

TEST_F(NetDpdk, GsoTcp4Of64KiBIntoMssSegments) { gso_roundtrip(this, false); }
TEST_F(NetDpdk, GsoTcp6Of64KiBIntoMssSegments) { gso_roundtrip(this, true); }

TEST_F(NetDpdk, SoftwareChecksumsOverOddLengthSegments) {
  auto [a, b] = pair();
  ASSERT_NE(a, nullptr);
  int n = 0;
  for (bool v6 : {false, true}) {
    for (bool udp : {false, true}) {
      FrameSpec s;
      s.v6 = v6;
      s.udp = udp;
      s.payload = 1001 + 333 + 7 + 41;
      const auto f = make_frame(s, 0x1111);
      GuestPages pages(3);
      const size_t head = header_len(s) + 41;
      PacketBuf* p = build(f, head, {1001, 333, 7}, &pages);
      PacketMeta m;
      m.flags = PacketMeta::kL4CsumPending | (v6 ? 0u : uint32_t{PacketMeta::kIpCsumPending});
      ASSERT_TRUE(pkt::parse_headers(p, m));
      ASSERT_TRUE(pkt::set_meta(p, m));
      ASSERT_EQ(a->tx_burst(0, {&p, 1}), 1u);
      auto rx = receive(b, 1);
      ASSERT_EQ(rx.size(), 1u);
      const ParsedFrame pf = parse_frame(bytes_of(rx[0]));
      EXPECT_TRUE(pf.error.empty()) << "v6=" << v6 << " udp=" << udp << ": " << pf.error;
      EXPECT_EQ(pf.payload.size(), s.payload);
      EXPECT_FALSE(pkt::meta(rx[0]).has(PacketMeta::kL4CsumPending)) << "work done, flag cleared";
      pkt::free(rx[0]);
      EXPECT_EQ(pages.total_frees(), 3);
      ++n;
    }
  }
  EXPECT_EQ(a->stats(0).tx_sw_csum, static_cast<uint64_t>(n));
}

TEST_F(NetDpdk, PassMetadataLeavesOffloadWorkToTheReceiver) {
  DpdkPortConfig base;
  base.pass_metadata = true;
  auto [a, b] = pair(base);
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->caps().tso);
  FrameSpec s;
  s.payload = 20000;
  const auto f = make_frame(s);
  std::vector<size_t> chunks(4, 4000);
  chunks.push_back(f.size() - 128 - 4 * 4000);
  GuestPages pages(chunks.size());
  PacketBuf* p = build(f, 128, chunks, &pages);
  const PacketMeta m = tso_meta(1000);
  ASSERT_TRUE(pkt::set_meta(p, m));
  ASSERT_EQ(a->tx_burst(0, {&p, 1}), 1u);
  auto rx = receive(b, 1);
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(bytes_of(rx[0]), f) << "untouched";
  const PacketMeta got = pkt::meta(rx[0]);
  EXPECT_TRUE(got.has(PacketMeta::kSegment | PacketMeta::kL4CsumPending | PacketMeta::kIpCsumPending));
  EXPECT_EQ(got.mss, 1000);
  // The receiver may segment it itself (what a vif with GSO off would do).
  PacketBuf* segs[32];
  auto n = pool_->segment(rx[0], segs);
  ASSERT_TRUE(n) << error_string(n.error());
  EXPECT_EQ(*n, 20u);
  pkt::free(rx[0]);
  EXPECT_EQ(pages.total_frees(), 0) << "segments still reference the pages";
  for (size_t i = 0; i < *n; ++i) {
    ASSERT_TRUE(pkt::complete_checksums(segs[i]));
    EXPECT_TRUE(parse_frame(bytes_of(segs[i])).error.empty()) << i;
  }
  pkt::free_bulk({segs, *n});
  EXPECT_EQ(pages.total_frees(), static_cast<int>(chunks.size()));
}

TEST_F(NetDpdk, GsoBeyondTheSegmentLimitIsDroppedNotExpanded) {
  DpdkPortConfig base;
  base.gso_max_segments = 16;
  auto [a, b] = pair(base);
  ASSERT_NE(a, nullptr);
  FrameSpec s;
  s.payload = 2000;
  const auto f = make_frame(s);
  GuestPages pages(1);
  PacketBuf* p = build(f, 128, {f.size() - 128}, &pages);
  const PacketMeta m = tso_meta(100);  // 20 segments > 16
  ASSERT_TRUE(pkt::set_meta(p, m));
  EXPECT_EQ(a->tx_burst(0, {&p, 1}), 1u);
  EXPECT_EQ(a->stats(0).tx_dropped, 1u);
  EXPECT_EQ(a->stats(0).tx_packets, 0u);
  EXPECT_TRUE(receive(b, 1).empty());
  EXPECT_EQ(pages.total_frees(), 1);
}

TEST_F(NetDpdk, SegmentRejectsLyingHeaders) {
  FrameSpec s;
  s.payload = 5000;
  auto f = make_frame(s);
  PacketBuf* p = pool_->alloc();
  ASSERT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(f.data()), f.size()}));
  PacketMeta m = tso_meta(1000, false, 32);  // the TCP header says 20
  ASSERT_TRUE(pkt::set_meta(p, m));
  PacketBuf* segs[16];
  auto r = pool_->segment(p, segs);
  EXPECT_FALSE(r);
  EXPECT_EQ(r.error(), EINVAL);
  m.l4_len = 20;
  m.l3_len = 24;  // IHL says 20
  ASSERT_TRUE(pkt::set_meta(p, m));
  EXPECT_FALSE(pool_->segment(p, segs));
  pkt::free(p);
}

// net_tap against the kernel: what DPDK transmits appears on the kernel
// interface (checked with an AF_PACKET socket), and what the kernel sends
// out of the interface arrives at rx_burst.
// ------------------------------------------------------------ coalescing

// Frame i of a TCP/IPv4 flow (valid checksums, DF, ACK, `mss` payload).
std::vector<uint8_t> gro_frame(uint32_t i, size_t mss = 1000, uint8_t flags = kTcpAck) {
  FrameSpec s;
  s.payload = mss;
  s.seq = 1000 + i * 1000;
  s.tcp_flags = flags;
  s.ip_id = static_cast<uint16_t>(50 + i);
  s.payload_seed = static_cast<uint8_t>(i * 13);
  auto f = make_frame(s);
  fix_tcp4_checksums(f);
  return f;
}

class NetGro : public NetDpdk {
 public:
  // Coalesces `frames` (one burst) and returns the resulting packets' bytes
  // and metadata; frees them.
  struct Out {
    std::vector<uint8_t> bytes;
    PacketMeta meta;
  };
  std::vector<Out> run(const std::vector<std::vector<uint8_t>>& frames, pkt::CoalesceOptions o = {},
                       pkt::CoalesceStats* st = nullptr) {
    std::vector<PacketBuf*> ps;
    for (const auto& f : frames) {
      PacketBuf* p = pool_->alloc();
      EXPECT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(f.data()), f.size()}));
      ps.push_back(p);
    }
    const size_t n = pkt::coalesce_tcp(ps, o, st);
    std::vector<Out> out;
    for (size_t i = 0; i < n; ++i) {
      out.push_back({bytes_of(ps[i]), pkt::meta(ps[i])});
      pkt::free(ps[i]);
    }
    return out;
  }
  // The payload of frames [from, to) after the first frame's headers.
  static std::vector<uint8_t> payload_of(const std::vector<std::vector<uint8_t>>& fs, size_t from, size_t to) {
    std::vector<uint8_t> v;
    for (size_t i = from; i < to; ++i) v.insert(v.end(), fs[i].begin() + 54, fs[i].end());
    return v;
  }
  static void expect_merged(const Out& o, const std::vector<std::vector<uint8_t>>& fs, size_t from, size_t to) {
    ASSERT_EQ(o.bytes.size(), 54 + payload_of(fs, from, to).size());
    EXPECT_TRUE(std::equal(o.bytes.begin() + 54, o.bytes.end(), payload_of(fs, from, to).begin()));
    EXPECT_TRUE(std::equal(o.bytes.begin(), o.bytes.begin() + 14, fs[from].begin())) << "L2 header";
    EXPECT_EQ(be16(o.bytes.data() + 16), o.bytes.size() - 14) << "IPv4 total length";
    EXPECT_EQ(be32(o.bytes.data() + 38), be32(fs[from].data() + 38)) << "the first frame's sequence number";
    EXPECT_EQ(be16(o.bytes.data() + 50), partial_field(o.bytes)) << "CHECKSUM_PARTIAL form";
    EXPECT_TRUE(o.meta.has(PacketMeta::kIpv4 | PacketMeta::kTcp | PacketMeta::kSegment | PacketMeta::kL4CsumPending));
    EXPECT_EQ(o.meta.mss, fs[from].size() - 54);
    EXPECT_EQ(o.meta.header_len(), 54u);
  }
};

// Each way a third frame may differ from the two before it: the two merge,
// the third stays as it was, in place after them.
TEST_F(NetGro, MergesOnlyWhatLinuxGroWould) {
  struct Case {
    const char* what;
    std::function<void(std::vector<uint8_t>&)> mutate;
    bool refix = true;  // recompute checksums after the change
  };
  const std::vector<Case> cases = {
      {"ttl", [](auto& f) { f[22] = 63; }},
      {"tos", [](auto& f) { f[15] = 0x10; }},
      {"window", [](auto& f) { put16(f.data() + 48, 1000); }},
      {"ack", [](auto& f) { put32(f.data() + 42, 78); }},
      {"df", [](auto& f) { put16(f.data() + 20, 0); }},
      {"fin", [](auto& f) { f[47] = kTcpAck | kTcpFin; }},
      {"syn", [](auto& f) { f[47] = kTcpAck | 0x02; }},
      {"cwr", [](auto& f) { f[47] = kTcpAck | kTcpCwr; }},
      {"seq gap", [](auto& f) { put32(f.data() + 38, be32(f.data() + 38) + 1); }},
      {"mac", [](auto& f) { f[0] = 0x04; }},
      {"larger than the first",
       [](auto& f) {
         f.push_back(1);
         put16(f.data() + 16, static_cast<uint16_t>(f.size() - 14));
       }},
      {"bad tcp checksum", [](auto& f) { f.back() ^= 1; }, false},
      {"bad ip checksum", [](auto& f) { f[24] ^= 1; }, false},
      {"ethernet padding", [](auto& f) { f.push_back(0); }, false},
  };
  for (const auto& c : cases) {
    std::vector<std::vector<uint8_t>> fs = {gro_frame(0), gro_frame(1), gro_frame(2)};
    c.mutate(fs[2]);
    if (c.refix) fix_tcp4_checksums(fs[2]);
    pkt::CoalesceStats st;
    auto out = run(fs, {}, &st);
    ASSERT_EQ(out.size(), 2u) << c.what;
    expect_merged(out[0], fs, 0, 2);
    EXPECT_TRUE(out[1].bytes == fs[2]) << c.what;
    EXPECT_FALSE(out[1].meta.has(PacketMeta::kSegment)) << c.what;
    EXPECT_EQ(st.merged_packets, 1u) << c.what;
    EXPECT_EQ(st.merged_frames, 2u) << c.what;
  }
}

TEST_F(NetGro, PshAndShortSegmentsEndAPacket) {
  std::vector<std::vector<uint8_t>> fs = {gro_frame(0), gro_frame(1, 1000, kTcpAck | kTcpPsh), gro_frame(2),
                                          gro_frame(3), gro_frame(4)};
  // Frame 3 is short: it ends the second packet; frame 4 continues the
  // stream but starts a third.
  fs[3].resize(54 + 400);
  put16(fs[3].data() + 16, static_cast<uint16_t>(fs[3].size() - 14));
  fix_tcp4_checksums(fs[3]);
  put32(fs[4].data() + 38, be32(fs[3].data() + 38) + 400);
  fix_tcp4_checksums(fs[4]);
  auto out = run(fs);
  ASSERT_EQ(out.size(), 3u);
  expect_merged(out[0], fs, 0, 2);
  EXPECT_EQ(out[0].bytes[47], kTcpAck | kTcpPsh) << "the PSH goes on the merged header";
  expect_merged(out[1], fs, 2, 4);
  EXPECT_EQ(out[1].bytes[47], kTcpAck);
  EXPECT_TRUE(out[2].bytes == fs[4]);
}

TEST_F(NetGro, BoundedBySegmentsAndLength) {
  std::vector<std::vector<uint8_t>> fs;
  for (uint32_t i = 0; i < 7; ++i) fs.push_back(gro_frame(i));
  pkt::CoalesceOptions o;
  o.max_segments = 3;
  auto out = run(fs, o);
  ASSERT_EQ(out.size(), 3u);
  expect_merged(out[0], fs, 0, 3);
  expect_merged(out[1], fs, 3, 6);
  EXPECT_TRUE(out[2].bytes == fs[6]);
  o = {};
  o.max_len = 54 + 2500;
  out = run(fs, o);
  ASSERT_EQ(out.size(), 4u);
  for (size_t k = 0; k < 3; ++k) expect_merged(out[k], fs, 2 * k, 2 * k + 2);
  EXPECT_TRUE(out[3].bytes == fs[6]);
}

// Without DF the IPv4 IDs must count up, as the library and Linux require.
TEST_F(NetGro, IpIdsMustCountUpWithoutDf) {
  std::vector<std::vector<uint8_t>> fs = {gro_frame(0), gro_frame(1), gro_frame(2), gro_frame(3)};
  for (auto& f : fs) put16(f.data() + 20, 0);
  put16(fs[3].data() + 18, 1);
  for (auto& f : fs) fix_tcp4_checksums(f);
  auto out = run(fs);
  ASSERT_EQ(out.size(), 2u);
  expect_merged(out[0], fs, 0, 3);
  EXPECT_TRUE(out[1].bytes == fs[3]);
}

// Frames of other protocols pass where they were, in their order; a TCP
// frame whose headers the adapter cannot read ends every packet.
TEST_F(NetGro, OtherFramesPassInOrder) {
  std::vector<uint8_t> arp(60, 0);
  arp[12] = 0x08;
  arp[13] = 0x06;
  FrameSpec u;
  u.udp = true;
  u.payload = 100;
  auto udp = make_frame(u);
  FrameSpec v6;
  v6.v6 = true;
  v6.payload = 1000;
  auto tcp6 = make_frame(v6);
  std::vector<std::vector<uint8_t>> fs = {arp, gro_frame(0), udp, gro_frame(1), tcp6, gro_frame(2)};
  auto out = run(fs);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_TRUE(out[0].bytes == arp);
  expect_merged(out[1], {gro_frame(0), gro_frame(1), gro_frame(2)}, 0, 3);
  EXPECT_TRUE(out[2].bytes == udp);
  EXPECT_TRUE(out[3].bytes == tcp6);
}

// An IPv4 fragment may be a piece of any flow's segment: no frame of a
// packet being merged moves past it.
TEST_F(NetGro, NothingOvertakesAnIpv4Fragment) {
  FrameSpec u;
  u.udp = true;
  u.payload = 100;
  auto frag = make_frame(u);
  put16(frag.data() + 20, 0x2000);  // MF
  fix_ip_checksum(frag);
  std::vector<std::vector<uint8_t>> fs = {gro_frame(0), gro_frame(1), frag, gro_frame(2), gro_frame(3)};
  auto out = run(fs);
  ASSERT_EQ(out.size(), 3u);
  expect_merged(out[0], fs, 0, 2);
  EXPECT_TRUE(out[1].bytes == frag);
  expect_merged(out[2], fs, 3, 5);
}

TEST_F(NetDpdk, TapExchangesFramesWithTheKernel) {
  const int tun = ::open("/dev/net/tun", O_RDWR);
  if (tun < 0) GTEST_SKIP() << "/dev/net/tun unavailable: " << std::strerror(errno);
  ::close(tun);
  const int sock = ::socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (sock < 0) GTEST_SKIP() << "no AF_PACKET socket (needs CAP_NET_RAW): " << std::strerror(errno);
  const std::string ifname = "xpt" + std::to_string(getpid() % 100000);
  DpdkPortConfig cfg;
  cfg.devargs = "net_tap_" + unique("t") + ",iface=" + ifname;
  auto port = env_->open_port(*pool_, cfg);
  if (!port) {
    ::close(sock);
    GTEST_SKIP() << "net_tap cannot create " << ifname << " (CAP_NET_ADMIN?): " << error_string(port.error());
  }
  PacketPort* tap = port->get();
  ports_.push_back(std::move(*port));
  ASSERT_EQ(test::bind_packet_socket(sock, ifname), 0) << "errno";
  timeval tv{0, 100000};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

  // DPDK -> kernel: a UDP frame with its checksum pending, over odd segments.
  FrameSpec s;
  s.udp = true;
  s.payload = 777;
  s.payload_seed = 99;
  const auto f = make_frame(s, 0x2222);
  GuestPages pages(2);
  PacketBuf* p = build(f, 128, {333, f.size() - 128 - 333}, &pages);
  PacketMeta m;
  m.flags = PacketMeta::kL4CsumPending | PacketMeta::kIpCsumPending;
  ASSERT_TRUE(pkt::parse_headers(p, m));
  ASSERT_TRUE(pkt::set_meta(p, m));
  ASSERT_EQ(tap->tx_burst(0, {&p, 1}), 1u);
  bool seen = false;
  std::vector<uint8_t> buf(4096);
  for (int i = 0; i < 30 && !seen; ++i) {
    const ssize_t n = ::recv(sock, buf.data(), buf.size(), 0);
    if (n <= 0) continue;
    std::vector<uint8_t> got(buf.begin(), buf.begin() + n);
    // Skip the kernel's own traffic (IPv6 neighbour discovery and such).
    if (got.size() != f.size() || be16(got.data() + 12) != 0x0800 || be16(got.data() + kEthLen + kIp4Len) != 40000 ||
        got.back() != f.back()) {
      continue;
    }
    const ParsedFrame pf = parse_frame(got);
    EXPECT_TRUE(pf.error.empty()) << pf.error;
    EXPECT_EQ(pf.payload, std::vector<uint8_t>(f.begin() + 42, f.end()));
    seen = true;
  }
  EXPECT_TRUE(seen) << "frame never reached the kernel interface";
  EXPECT_EQ(pages.total_frees(), 2);

  // kernel -> DPDK.
  FrameSpec k;
  k.payload = 500;
  k.payload_seed = 42;
  auto kf = make_frame(k);
  // Valid checksums so nothing on the way drops it.
  {
    uint8_t* ip = kf.data() + kEthLen;
    put16(ip + 10, 0);
    put16(ip + 10, static_cast<uint16_t>(~fold16(sum16(ip, kIp4Len))));
    uint8_t* tcp = ip + kIp4Len;
    put16(tcp + 16, 0);
    const uint32_t pseudo = sum16(ip + 12, 8) + 6 + static_cast<uint32_t>(kTcpLen + k.payload);
    put16(tcp + 16, static_cast<uint16_t>(~fold16(sum16(tcp, kTcpLen + k.payload, pseudo))));
  }
  ASSERT_EQ(::send(sock, kf.data(), kf.size(), 0), static_cast<ssize_t>(kf.size())) << std::strerror(errno);
  // net_tap has a receive wake-up: its queue fd polls readable while
  // frames wait (a reactor sleeps on it instead of polling the port).
  const int wake = tap->rx_wait_fd(0);
  ASSERT_GE(wake, 0);
  pollfd pfd{wake, POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 2000), 1) << "the frame did not make the wake-up fd readable";
  EXPECT_EQ(tap->rx_wait_fd(1), -1) << "one queue only";
  bool arrived = false;
  for (int i = 0; i < 400 && !arrived; ++i) {
    PacketBuf* burst[32];
    const size_t n = tap->rx_burst(0, burst);
    for (size_t j = 0; j < n; ++j) {
      if (bytes_of(burst[j]) == kf) {
        arrived = true;
        const PacketMeta rm = pkt::meta(burst[j]);
        if (tap->caps().rx_csum) {
          EXPECT_TRUE(rm.has(PacketMeta::kL4CsumVerified));
        }
      }
    }
    pkt::free_bulk({burst, n});
    if (!arrived) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(arrived) << "frame sent by the kernel never reached rx_burst";
  ::close(sock);
}

}  // namespace
}  // namespace xenpath
