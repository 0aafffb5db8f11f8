// The vbd device type end to end on the simulated host, production path:
// the BackendDriver on a control Reactor over the simulated xenstored's
// socket, the VBD queues on a worker Reactor with io_uring (the
// BlkbackService on a BackendDaemon, as xenpath-blkback runs it), a toolstack
// writing the keys libxl writes, and a guest doing the blkfront handshake
// (ring-page-order / ring-ref%u / event-channel / protocol /
// feature-persistent, or queue-%u/ for several queues) then I/O.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "blkback/blk_device.h"
#include "blkback/blk_service.h"
#include "blkback/image_open.h"
#include "sim/blk/sim_blkfront.h"
#include "tests/fixtures/backend_rig.h"
#include "tests/fixtures/blk_files.h"
#include "tests/fixtures/vhd_files.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using sim::SimBlkfront;
using sim::SimToolstack;
using sim::SimXenbusFrontend;
using test::eventually;
using test::fill_pattern;
using test::TempFile;

constexpr DomId kGuest = 5;
constexpr uint64_t kImageBytes = 32ull << 20;

class BlkVbd : public ::testing::Test, public test::SimBackendRig<BlkbackService> {
 protected:
  void SetUp() override {
    spdlog::set_level(spdlog::level::warn);
    DaemonOptions dopt;
    dopt.name = "blk-test";
    dopt.workers = 1;
    VbdOptions vo;
    vo.max_queues = 2;
    tune(vo);
    ASSERT_NO_FATAL_FAILURE(start(kGuest, dopt, vo));
  }
  // A fixture's changes to the daemon's options.
  virtual void tune(VbdOptions& /*vo*/) {}

  void TearDown() override {
    fronts_.clear();
    xenbus_.clear();
    stop();
  }

  // The toolstack plugs the disk; the guest attaches its xenbus frontend.
  SimXenbusFrontend& plug(uint32_t devid, const std::string& params, const std::string& mode,
                          const std::string& device_type = "disk") {
    auto& slot = xenbus_[devid];
    slot = BackendRigBase::plug(devid, {{"params", params}, {"mode", mode}, {"type", "file"}},
                                {{"virtual-device", std::to_string(devid)}, {"device-type", device_type}});
    return *slot;
  }

  // A blkfront ring and the keys announcing it (under `prefix`), with the
  // protocol key every blkfront writes (unless the caller wrote one).
  SimBlkfront& ring(uint32_t devid, const SimBlkfront::Options& o, sim::XsKeys& keys, const std::string& prefix = "") {
    bool has_protocol = false;
    for (const auto& [k, v] : keys) has_protocol |= k == "protocol";
    if (!has_protocol) keys.emplace_back("protocol", std::string(blk_protocol_name(o.protocol)));
    auto f = SimBlkfront::create(*guest_, *guest_evtchn_, o);
    EXPECT_TRUE(f) << error_string(f.error());
    SimBlkfront& r = **f;
    if (o.ring_order == 0 && prefix.empty()) {
      keys.emplace_back("ring-ref", std::to_string(r.ring_refs()[0]));
    } else {
      for (size_t i = 0; i < r.ring_refs().size(); ++i) {
        keys.emplace_back(prefix + "ring-ref" + std::to_string(i), std::to_string(r.ring_refs()[i]));
      }
    }
    keys.emplace_back(prefix + "event-channel", std::to_string(r.port()));
    fronts_[devid].push_back(std::move(*f));
    return r;
  }

  // Writes a pattern through `f` and reads it back, every byte checked.
  void verify_io(SimBlkfront& f, uint64_t sector, uint32_t seed) {
    constexpr uint32_t kSectors = 128;  // 16 pages: indirect when offered
    std::vector<std::byte> out(kSectors * 512), in(kSectors * 512);
    fill_pattern(out.data(), out.size(), sector * 512, seed);
    SimBlkfront::Io ios[2];
    ios[0].op = BLKIF_OP_WRITE;
    ios[0].sector = sector;
    ios[0].sectors = kSectors;
    ios[0].data = out.data();
    ASSERT_TRUE(f.run(std::span(ios, 1)));
    ASSERT_EQ(ios[0].status, BLKIF_RSP_OKAY);
    ios[1].op = BLKIF_OP_READ;
    ios[1].sector = sector;
    ios[1].sectors = kSectors;
    ios[1].data = in.data();
    ASSERT_TRUE(f.run(std::span(ios + 1, 1)));
    ASSERT_EQ(ios[1].status, BLKIF_RSP_OKAY);
    ASSERT_EQ(in, out);
  }

  // One write of `data` at `sector`: the answer's status.
  int16_t write_at(SimBlkfront& f, uint64_t sector, std::vector<std::byte>& data) {
    SimBlkfront::Io io;
    io.op = BLKIF_OP_WRITE;
    io.sector = sector;
    io.sectors = static_cast<uint32_t>(data.size() / 512);
    io.data = data.data();
    EXPECT_TRUE(f.run(std::span(&io, 1)));
    return io.status;
  }

  // A writable disk plugged and connected with one ring.
  SimBlkfront& attach(uint32_t devid, const std::string& params) {
    auto& xb = plug(devid, params, "w");
    EXPECT_TRUE(xb.wait_backend(XenbusState::kInitWait));
    SimBlkfront::Options o;
    o.max_indirect_segments = 256;
    sim::XsKeys keys;
    SimBlkfront& f = ring(devid, o, keys);
    EXPECT_TRUE(xb.connect(keys));
    return f;
  }

  // The last 4 KiB of a disk (whole blocks whatever the sector size), with
  // a VHD footer's cookie at the start of its last 512 bytes when `cookie`.
  static std::vector<std::byte> last_block(bool cookie) {
    std::vector<std::byte> b(4096, std::byte{0x5A});
    if (cookie) std::memcpy(b.data() + 4096 - 512, "conectix", 8);
    return b;
  }

  const VbdDevice* device(uint32_t devid) { return backend_device<VbdDevice>(devid); }

  std::map<uint32_t, std::unique_ptr<SimXenbusFrontend>> xenbus_;
  std::map<uint32_t, std::vector<std::unique_ptr<SimBlkfront>>> fronts_;
};

TEST_F(BlkVbd, HandshakeKeysIoAndClose) {
  TempFile file(kImageBytes);
  auto& xb = plug(51712, "aio:" + file.path, "w");
  ASSERT_TRUE(xb.wait_backend(XenbusState::kInitWait));
  // What the guest reads before building its ring.
  EXPECT_EQ(key(51712, "feature-max-indirect-segments"), "256");
  EXPECT_EQ(key(51712, "max-ring-page-order"), "4");
  EXPECT_EQ(key(51712, "multi-queue-max-queues"), "2");
  EXPECT_EQ(key(51712, "feature-persistent"), "1");
  EXPECT_EQ(key(51712, "feature-flush-cache"), "1");
  EXPECT_EQ(key(51712, "feature-barrier"), "1");
  EXPECT_EQ(key(51712, "sectors"), std::to_string(kImageBytes / 512));
  EXPECT_EQ(key(51712, "info"), "0");
  EXPECT_EQ(key(51712, "hotplug-status"), "connected");
  const std::string lbs = key(51712, "sector-size");
  EXPECT_TRUE(lbs == "512" || lbs == "4096") << lbs;
  EXPECT_NE(key(51712, "physical-sector-size")[0], '<');
  const std::string discard = key(51712, "feature-discard");
  if (discard == "1") {
    EXPECT_NE(key(51712, "discard-granularity")[0], '<');
    EXPECT_EQ(key(51712, "discard-alignment"), "0");
    EXPECT_EQ(key(51712, "discard-secure"), "0");
  }

  SimBlkfront::Options o;
  o.protocol = BlkProtocol::kX86_32;
  o.ring_order = 4;
  o.persistent = true;
  o.max_indirect_segments = 256;
  sim::XsKeys keys = {{"ring-page-order", "4"}, {"protocol", "x86_32-abi"}, {"feature-persistent", "1"}};
  SimBlkfront& f = ring(51712, o, keys);
  ASSERT_TRUE(xb.connect(keys));
  EXPECT_EQ(key(51712, "state"), "4");
  verify_io(f, 2048, 1);
  const VbdDevice* d = device(51712);
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d->connected());
  ASSERT_EQ(d->queue_count(), 1u);
  EXPECT_EQ(d->queue_stats(0).writes.get(), 1u);
  EXPECT_EQ(d->queue_stats(0).reads.get(), 1u);
  EXPECT_EQ(d->queue_stats(0).indirect.get(), 2u);
  // The image file has it too.
  std::vector<std::byte> want(128 * 512);
  fill_pattern(want.data(), want.size(), 2048 * 512, 1);
  EXPECT_EQ(file.read(2048 * 512, want.size()), want);

  // Orderly close: Closed, and nothing of the guest stays mapped.
  ASSERT_TRUE(xb.close());
  EXPECT_TRUE(backend_becomes(51712, XenbusState::kClosed));
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
  fronts_.clear();  // revokes every grant: EBUSY would have meant a leak
}

// A VHD chain through the device: vhd: params or a bare path (detected),
// one queue offered for a writable VHD (its leaf has one owner thread),
// discard by whole blocks, the daemon's queues for a read-only chain, and a
// damaged VHD refused with a reason rather than served as raw.
TEST_F(BlkVbd, ServesVhdChains) {
  test::TempDir dir;
  VhdCreateOptions c;
  c.size = kImageBytes;
  ASSERT_TRUE(vhd_ok(vhd_create(dir / "base.vhd", c)));
  c.type = vhd::DiskType::kDifferencing;
  c.size = 0;
  c.parent = dir / "base.vhd";
  ASSERT_TRUE(vhd_ok(vhd_create(dir / "child.vhd", c)));

  auto& xb = plug(51712, "vhd:" + (dir / "child.vhd"), "w");
  ASSERT_TRUE(xb.wait_backend(XenbusState::kInitWait));
  EXPECT_EQ(key(51712, "multi-queue-max-queues"), "1");
  EXPECT_EQ(key(51712, "sectors"), std::to_string(kImageBytes / 512));
  EXPECT_EQ(key(51712, "feature-flush-cache"), "1");
  if (key(51712, "feature-discard") == "1") {
    EXPECT_EQ(key(51712, "discard-granularity"), "2097152");
  }
  SimBlkfront::Options o;
  o.max_indirect_segments = 256;
  sim::XsKeys keys;
  SimBlkfront& f = ring(51712, o, keys);
  ASSERT_TRUE(xb.connect(keys));
  verify_io(f, 4095, 7);  // across the first block boundary (sector 4096)
  ASSERT_TRUE(xb.close());
  EXPECT_TRUE(backend_becomes(51712, XenbusState::kClosed));
  fronts_.clear();
  // The base was not written; the child was.
  auto base = vhd_open_file(dir / "base.vhd", {});
  ASSERT_TRUE(base) << base.error().message;
  EXPECT_EQ(base->allocated_blocks, 0u);
  auto child = vhd_open_file(dir / "child.vhd", {});
  ASSERT_TRUE(child) << child.error().message;
  EXPECT_EQ(child->allocated_blocks, 2u);

  // The base, read-only, by its bare path: detected, the daemon's queues.
  auto& ro = plug(51728, dir / "base.vhd", "r");
  ASSERT_TRUE(ro.wait_backend(XenbusState::kInitWait));
  EXPECT_EQ(key(51728, "multi-queue-max-queues"), "2");
  EXPECT_EQ(key(51728, "info"), std::to_string(VDISK_READONLY));

  // A VHD whose end footer is gone: refused, not served as raw.
  const std::string broken = dir / "broken.vhd";
  ASSERT_EQ(test::run_command("cp " + test::shell_quote(dir / "base.vhd") + " " + test::shell_quote(broken)).status, 0);
  ASSERT_EQ(::truncate(broken.c_str(), static_cast<off_t>(test::file_size(broken) - 512)), 0);
  plug(51744, broken, "w");
  EXPECT_TRUE(backend_becomes(51744, XenbusState::kClosing));
  EXPECT_EQ(key(51744, "error").rfind(std::to_string(EINVAL) + " ", 0), 0u) << key(51744, "error");
}

// A bare path probed as raw: the guest cannot plant a VHD footer in the last
// 512 bytes of its disk (the next attach would take the file for a VHD,
// docs/blkback.md "Format detection and trust"); with "raw:" it can, and
// the file then no longer attaches by its bare path.
TEST_F(BlkVbd, ProbedRawRefusesAPlantedFooter) {
  TempFile bare(kImageBytes), forced(kImageBytes);
  SimBlkfront& fb = attach(51712, bare.path);
  SimBlkfront& ff = attach(51728, "raw:" + forced.path);
  const VbdDevice* db = device(51712);
  ASSERT_NE(db, nullptr);
  ASSERT_NE(db->probe_guard(), nullptr);
  EXPECT_EQ(device(51728)->probe_guard(), nullptr);
  const uint64_t last = kImageBytes / 512 - 8;

  auto footer = last_block(true);
  EXPECT_EQ(write_at(fb, last, footer), BLKIF_RSP_ERROR);
  // A longer write ending there: refused too, none of it written.
  std::vector<std::byte> longer(64 * 1024, std::byte{0x11});
  std::memcpy(longer.data() + longer.size() - 512, "conectix", 8);
  EXPECT_EQ(write_at(fb, kImageBytes / 512 - 128, longer), BLKIF_RSP_ERROR);
  EXPECT_EQ(bare.read(kImageBytes - longer.size(), longer.size()), std::vector<std::byte>(longer.size()));
  EXPECT_EQ(db->queue_stats(0).errors.get(BlkReason::kProbeGuard), 2u);
  // Anything else in the last block, the cookie anywhere else: written.
  auto plain = last_block(false);
  std::memcpy(plain.data(), "conectix", 8);
  EXPECT_EQ(write_at(fb, last, plain), BLKIF_RSP_OKAY);
  EXPECT_EQ(bare.read(kImageBytes - plain.size(), plain.size()), plain);
  std::memcpy(longer.data() + longer.size() - 512, "not a VHD", 9);
  EXPECT_EQ(write_at(fb, kImageBytes / 512 - 128, longer), BLKIF_RSP_OKAY);
  EXPECT_EQ(bare.read(kImageBytes - longer.size(), longer.size()), longer);
  EXPECT_EQ(write_at(fb, 0, footer), BLKIF_RSP_OKAY);

  // raw: the guest's bytes, all of them.
  EXPECT_EQ(write_at(ff, last, footer), BLKIF_RSP_OKAY);
  EXPECT_EQ(forced.read(kImageBytes - footer.size(), footer.size()), footer);
  EXPECT_EQ(device(51728)->queue_stats(0).errors.get(BlkReason::kProbeGuard), 0u);
  // What the guard is for: by its bare path that file is now a "VHD"
  // (refused here, as its footer does not validate).
  plug(51744, forced.path, "w");
  EXPECT_TRUE(backend_becomes(51744, XenbusState::kClosing));
}

class BlkVbdNoProbe : public BlkVbd {
 protected:
  void tune(VbdOptions& vo) override { vo.probe_format = false; }
};

TEST_F(BlkVbdNoProbe, BarePathsAreRawAndVhdNeedsItsPrefix) {
  test::TempDir dir;
  VhdCreateOptions c;
  c.size = kImageBytes;
  ASSERT_TRUE(vhd_ok(vhd_create(dir / "base.vhd", c)));
  const uint64_t file_bytes = test::file_size(dir / "base.vhd");
  ASSERT_LT(file_bytes, kImageBytes);
  // The bare path: the file's own bytes, metadata and all, as a raw disk.
  auto& bare = plug(51712, dir / "base.vhd", "r");
  ASSERT_TRUE(bare.wait_backend(XenbusState::kInitWait));
  const uint64_t sectors = std::stoull(key(51712, "sectors"));
  EXPECT_LE(sectors * 512, file_bytes);
  EXPECT_GT(sectors, 0u);
  // With the prefix: the VHD's virtual disk.
  auto& vhd = plug(51728, "vhd:" + (dir / "base.vhd"), "r");
  ASSERT_TRUE(vhd.wait_backend(XenbusState::kInitWait));
  EXPECT_EQ(key(51728, "sectors"), std::to_string(kImageBytes / 512));
}

// Without probing nothing reads a bare path's bytes: no guard.
TEST_F(BlkVbdNoProbe, NoGuardOnBarePaths) {
  TempFile file(kImageBytes);
  SimBlkfront& f = attach(51712, file.path);
  ASSERT_NE(device(51712), nullptr);
  EXPECT_EQ(device(51712)->probe_guard(), nullptr);
  auto footer = last_block(true);
  EXPECT_EQ(write_at(f, kImageBytes / 512 - 8, footer), BLKIF_RSP_OKAY);
  EXPECT_EQ(file.read(kImageBytes - footer.size(), footer.size()), footer);
}

TEST_F(BlkVbd, TwoQueues) {
  TempFile file(kImageBytes);
  auto& xb = plug(768, file.path, "w");
  ASSERT_TRUE(xb.wait_backend(XenbusState::kInitWait));
  SimBlkfront::Options o;
  o.max_indirect_segments = 256;
  sim::XsKeys keys = {{"multi-queue-num-queues", "2"}, {"ring-page-order", "1"}};
  o.ring_order = 1;
  SimBlkfront& q0 = ring(768, o, keys, "queue-0/");
  SimBlkfront& q1 = ring(768, o, keys, "queue-1/");
  ASSERT_TRUE(xb.connect(keys));
  verify_io(q0, 0, 3);
  verify_io(q1, 4096, 4);
  const VbdDevice* d = device(768);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->queue_count(), 2u);
  EXPECT_EQ(d->queue_stats(0).writes.get(), 1u);
  EXPECT_EQ(d->queue_stats(1).writes.get(), 1u);
  ASSERT_TRUE(xb.close());
  EXPECT_TRUE(backend_becomes(768, XenbusState::kClosed));
}

TEST_F(BlkVbd, ReadOnlyCdrom) {
  TempFile file(kImageBytes);
  auto& xb = plug(5632, file.path, "r", "cdrom");
  ASSERT_TRUE(xb.wait_backend(XenbusState::kInitWait));
  EXPECT_EQ(key(5632, "info"), std::to_string(VDISK_CDROM | VDISK_READONLY));
  EXPECT_EQ(key(5632, "feature-flush-cache"), "0");
  EXPECT_EQ(key(5632, "feature-barrier"), "0");
  EXPECT_EQ(key(5632, "feature-discard")[0], '<');  // not offered at all
  SimBlkfront::Options o;
  sim::XsKeys keys;
  SimBlkfront& f = ring(5632, o, keys);
  ASSERT_TRUE(xb.connect(keys));
  std::vector<std::byte> buf(4096);
  SimBlkfront::Io ios[2];
  ios[0].op = BLKIF_OP_WRITE;
  ios[0].sectors = 8;
  ios[0].data = buf.data();
  ios[1].op = BLKIF_OP_READ;
  ios[1].sectors = 8;
  ios[1].data = buf.data();
  ASSERT_TRUE(f.run(ios));
  EXPECT_EQ(ios[0].status, BLKIF_RSP_ERROR);
  EXPECT_EQ(ios[1].status, BLKIF_RSP_OKAY);
  ASSERT_TRUE(xb.close());
}

TEST_F(BlkVbd, BadFrontendKeysRefuseTheConnection) {
  TempFile file(kImageBytes);
  struct Case {
    uint32_t devid;
    sim::XsKeys extra;
  };
  const std::vector<Case> cases = {
      {10, {{"protocol", "bogus-abi"}}},       {11, {{"multi-queue-num-queues", "3"}}},  // above the 2 offered
      {12, {{"multi-queue-num-queues", "0"}}}, {13, {{"ring-page-order", "5"}}},         // above the 4 offered
      {14, {{"ring-page-order", "01"}}},                                                 // not a strict decimal
  };
  for (const Case& c : cases) {
    auto& xb = plug(c.devid, file.path, "w");
    SimBlkfront::Options o;
    sim::XsKeys keys = c.extra;
    ring(c.devid, o, keys);
    ASSERT_TRUE(xb.publish(keys));
    EXPECT_EQ(xb.await_connected().error(), EPIPE) << "device " << c.devid;
    EXPECT_NE(key(c.devid, "error")[0], '<') << "device " << c.devid << " has no error node";
  }
  // A missing event-channel is refused too.
  auto& xb = plug(20, file.path, "w");
  auto f = SimBlkfront::create(*guest_, *guest_evtchn_, {});
  ASSERT_TRUE(f);
  ASSERT_TRUE(xb.publish({{"ring-ref", std::to_string((*f)->ring_refs()[0])}}));
  EXPECT_EQ(xb.await_connected().error(), EPIPE);
  fronts_[20].push_back(std::move(*f));
}

TEST_F(BlkVbd, ProbeWaitsForParamsAndRefusesUnknownFormats) {
  TempFile file(kImageBytes);
  // No params yet: not ready, the device stays Initialising until they come.
  ASSERT_TRUE(tools_->add_device("vbd", kGuest, 29, kDom0, {{"mode", "w"}}, {}));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(key(29, "state"), "1");
  ASSERT_TRUE(tools_xs_->write(kXsNoTxn, be(29) + "/params", file.path));
  EXPECT_TRUE(backend_becomes(29, XenbusState::kInitWait));
  // qcow2 is not served: refused at once with a reason (error node, Closing)
  // so the toolstack does not sit out its InitWait timeout.
  ASSERT_TRUE(tools_->add_device("vbd", kGuest, 30, kDom0, {{"params", "qcow2:" + file.path}, {"mode", "w"}}, {}));
  EXPECT_TRUE(backend_becomes(30, XenbusState::kClosing));
  EXPECT_EQ(key(30, "error").rfind(std::to_string(EOPNOTSUPP) + " ", 0), 0u) << key(30, "error");
  // A raw image is served.
  ASSERT_TRUE(tools_->add_device("vbd", kGuest, 31, kDom0, {{"params", "raw:" + file.path}, {"mode", "w"}}, {}));
  EXPECT_TRUE(backend_becomes(31, XenbusState::kInitWait));
  // An image that does not exist: refused, not mistaken for "not ready".
  ASSERT_TRUE(tools_->add_device("vbd", kGuest, 32, kDom0, {{"params", file.path + ".absent"}, {"mode", "w"}}, {}));
  EXPECT_TRUE(backend_becomes(32, XenbusState::kClosing));
  EXPECT_NE(key(32, "error")[0], '<');
  for (uint32_t dev : {29u, 30u, 31u, 32u}) ASSERT_TRUE(tools_->force_remove("vbd", kGuest, dev, kDom0));
  // The toolstack may then plug a good disk at the same address.
  ASSERT_TRUE(tools_->add_device("vbd", kGuest, 32, kDom0, {{"params", file.path}, {"mode", "w"}}, {}));
  EXPECT_TRUE(backend_becomes(32, XenbusState::kInitWait));
  ASSERT_TRUE(tools_->force_remove("vbd", kGuest, 32, kDom0));
}

// Issue 16: a connected VBD whose guest stopped doing I/O costs its worker
// nothing: no periodic wake-up (persistent grants are purged by a one-shot
// timer due in a minute), no poll window opened by a timer.
TEST_F(BlkVbd, IdleQueueLetsItsWorkerSleep) {
  TempFile file(kImageBytes);
  auto& xb = plug(41, file.path, "w");
  SimBlkfront::Options o;
  o.persistent = true;
  o.max_indirect_segments = 256;
  sim::XsKeys keys = {{"feature-persistent", "1"}};
  SimBlkfront& f = ring(41, o, keys);
  ASSERT_TRUE(xb.connect(keys));
  verify_io(f, 0, 9);
  EXPECT_LE(test::idle_worker_iterations(daemon(), 1000ms), test::kIdleIterationsPerSecond);
  EXPECT_TRUE(device(41)->connected());
}

TEST_F(BlkVbd, RingOverrunClosesTheDevice) {
  TempFile file(kImageBytes);
  auto& xb = plug(40, file.path, "w");
  SimBlkfront::Options o;
  o.max_indirect_segments = 256;
  sim::XsKeys keys;
  SimBlkfront& f = ring(40, o, keys);
  ASSERT_TRUE(xb.connect(keys));
  verify_io(f, 0, 5);
  f.set_req_prod_raw(f.req_prod_pvt() + 500);
  ASSERT_TRUE(f.notify());
  EXPECT_TRUE(backend_becomes(40, XenbusState::kClosing));
  EXPECT_NE(key(40, "error")[0], '<');
  EXPECT_TRUE(eventually([&] { return !device(40)->connected(); }));
  // The guest stays (it does not answer Closing): the halted device costs
  // the worker nothing (issue 16 measured 26 % of a dom0 CPU).
  EXPECT_LE(test::idle_worker_iterations(daemon(), 1000ms), test::kIdleIterationsPerSecond);
}

}  // namespace
}  // namespace xenpath
