// Per-VBD QoS end to end on the simulated host: `xenpath-sim blkback` with
// two guests whose VBDs share ONE worker reactor, each keeping a queue depth
// of verified I/O. Guest 1's disk is plugged with qos-read-iops (the
// create-time key); its achieved read rate must be the limit to within 5 %,
// and guest 2 must not suffer for it (compared, as a ratio in the same run,
// with a phase where neither is limited). Then the limit is changed at
// runtime through `xenpath-ctl set` (the backend key and its watch): off,
// then a bandwidth limit, each taking effect. Rates are measured over
// seconds from the daemon's own counters (`stats`), never as timed
// assertions on the machine's speed: the limits are far below what the sim
// does unlimited even in a Debug build on a loaded 2-core machine.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>
#include <time.h>

#include "sim/blk/sim_blkhost.h"
#include "sim/blk/sim_blkload.h"
#include "tests/fixtures/blk_demo_run.h"
#include "tests/fixtures/blk_files.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::eventually;

constexpr uint64_t kReadIops = 500;        // create-time limit of guest 1
constexpr uint64_t kReadBps = 250 * 4096;  // runtime limit: 250 reads of 4 KiB per second
constexpr uint64_t kWriteIops = 300;       // then writes
constexpr auto kSettle = 1500ms;           // past the burst (1 s) even if the guest was slow to use it
constexpr auto kWindow = 3s;

struct Sample {
  Clock::time_point at;
  uint64_t reads[2] = {};
  uint64_t read_bytes[2] = {};
  uint64_t writes[2] = {};  // and flushes: both draw on the write buckets
  uint64_t ops[2] = {};
};

class BlkQosSim : public ::testing::Test {
 protected:
  void SetUp() override {
    run_.start([](DaemonCli& cli, sim::BlkDemoOptions& opt, VbdOptions&) {
      cli.daemon.workers = 1;  // both guests' queues on one reactor
      opt.run.seconds = 28;
      opt.queues = 1;
      opt.read_percent = 70;
      // A burst of 1 s, not the default 100 ms: on a loaded 2-core machine
      // (load average 10 while these figures were taken) the guest's or the
      // worker's thread can be off the CPU, or the image's fdatasync stall
      // the writes behind it, for longer than 100 ms; the guest then has
      // nothing waiting and the credit beyond the burst is gone (measured:
      // 467 reads/s of 500, 285 writes/s of 300 with 100 ms). The limiter's
      // own accuracy is what this test is about.
      opt.backend_keys[1] = {{"qos-read-iops", std::to_string(kReadIops)}, {"qos-burst-ms", "1000"}};
    });
  }
  void TearDown() override { EXPECT_EQ(run_.join(), 0) << "the run's self-check (verified data, nothing left mapped)"; }
  std::pair<int, std::string> ctl(std::vector<std::string> args) { return run_.ctl(std::move(args)); }
  nlohmann::json ctl_json(std::vector<std::string> args) { return run_.ctl_json(std::move(args)); }
  Sample sample() {
    Sample s;
    const nlohmann::json st = ctl_json({"stats"});
    s.at = Clock::now();
    for (const auto& d : st["devices"]) {
      const int g = d.value("frontend", 0) - 1;
      if (g < 0 || g > 1) continue;
      s.reads[g] = d.value("reads", uint64_t{0});
      s.read_bytes[g] = d.value("read_bytes", uint64_t{0});
      s.writes[g] = d.value("writes", uint64_t{0}) + d.value("flushes", uint64_t{0});  // a flush per 64 writes
      s.ops[g] = s.reads[g] + s.writes[g];
    }
    return s;
  }
  // Per-second rates of both guests over kWindow after kSettle.
  struct Rates {
    double reads[2], read_bytes[2], writes[2], ops[2];
  };
  Rates measure() {
    std::this_thread::sleep_for(kSettle);
    const Sample a = sample();
    std::this_thread::sleep_for(kWindow);
    const Sample b = sample();
    const double dt = std::chrono::duration<double>(b.at - a.at).count();
    Rates r{};
    for (int g = 0; g < 2; ++g) {
      r.reads[g] = static_cast<double>(b.reads[g] - a.reads[g]) / dt;
      r.read_bytes[g] = static_cast<double>(b.read_bytes[g] - a.read_bytes[g]) / dt;
      r.writes[g] = static_cast<double>(b.writes[g] - a.writes[g]) / dt;
      r.ops[g] = static_cast<double>(b.ops[g] - a.ops[g]) / dt;
    }
    return r;
  }

  test::BlkDemoRun run_;
};

TEST_F(BlkQosSim, LimitedGuestGetsItsRateAndTheOtherIsUnaffected) {
  ASSERT_TRUE(run_.wait_connected(2, 15s));
  // One worker serves both.
  const nlohmann::json list = ctl_json({"list"});
  ASSERT_EQ(list["devices"].size(), 2u);
  EXPECT_EQ(list["devices"][0]["per_queue"][0]["worker"], list["devices"][1]["per_queue"][0]["worker"]);

  // 1. The create-time key: guest 1's reads at the limit.
  const Rates limited = measure();
  RecordProperty("limited_reads_per_s", std::to_string(limited.reads[0]));
  EXPECT_NEAR(limited.reads[0], kReadIops, kReadIops * 0.05) << "guest 1 reads/s with qos-read-iops=" << kReadIops;
  nlohmann::json show = ctl_json({"show", "1/51712"});
  EXPECT_EQ(show["qos"]["read_iops"], kReadIops) << show.dump(2);
  EXPECT_GT(show["qos"]["delayed"].get<uint64_t>(), 0u);
  EXPECT_GT(show["qos"]["throttled_seconds"].get<double>(), 0.5);
  EXPECT_EQ(ctl_json({"show", "2/51712"})["qos"]["delayed"], 0u);
  auto [show_rc, show_text] = ctl({"show", "1/51712"});
  EXPECT_EQ(show_rc, 0);
  EXPECT_NE(show_text.find("qos:"), std::string::npos) << show_text;
  EXPECT_NE(show_text.find("throttled_seconds"), std::string::npos) << show_text;

  // 2. Off at runtime (xenpath-ctl set: the key goes, the watch applies it).
  auto [off_rc, off_text] = ctl({"set", "vbd/1/51712", "qos-read-iops=0"});
  ASSERT_EQ(off_rc, 0) << off_text;
  EXPECT_NE(off_text.find("unlimited"), std::string::npos) << off_text;
  const Rates free = measure();
  EXPECT_GT(free.reads[0], kReadIops * 1.5) << "guest 1 still limited after qos-read-iops=0";
  EXPECT_EQ(ctl_json({"show", "1/51712"})["qos"]["read_iops"], 0u);
  std::printf("guest 1 reads/s: limited %.1f (limit %llu), unlimited %.1f\n", limited.reads[0],
              static_cast<unsigned long long>(kReadIops), free.reads[0]);

  // 3. A bandwidth limit at runtime.
  auto [bps_rc, bps_text] = ctl({"set", "1/51712", "qos-read-bps=" + std::to_string(kReadBps)});
  ASSERT_EQ(bps_rc, 0) << bps_text;
  const Rates bw = measure();
  std::printf("guest 1 read bytes/s: %.0f (limit %llu)\n", bw.read_bytes[0], static_cast<unsigned long long>(kReadBps));
  EXPECT_NEAR(bw.read_bytes[0], kReadBps, kReadBps * 0.05);

  // 4. Writes instead (reads unlimited again): the write bucket.
  ASSERT_EQ(ctl({"set", "1/51712", "qos-read-bps=0"}).first, 0);
  ASSERT_EQ(ctl({"set", "1/51712", "qos-write-iops=" + std::to_string(kWriteIops)}).first, 0);
  const Rates wr = measure();
  std::printf("guest 1 writes+flushes/s: %.1f (limit %llu)\n", wr.writes[0],
              static_cast<unsigned long long>(kWriteIops));
  EXPECT_NEAR(wr.writes[0], kWriteIops, kWriteIops * 0.05);

  // Guest 2 on the same worker: not slower while guest 1 was limited (the
  // phases before and after) than while neither was (a loose bound: a
  // loaded machine's rates wander; the median of the three limited phases
  // on both sides of the free one takes out a drift and one disturbed phase).
  double phases[] = {limited.ops[1], bw.ops[1], wr.ops[1]};
  std::sort(std::begin(phases), std::end(phases));
  const double with_limit = phases[1];
  std::printf("guest 2 ops/s: %.1f (median of %.1f, %.1f, %.1f) while guest 1 was limited, %.1f while not (%.2fx)\n",
              with_limit, limited.ops[1], bw.ops[1], wr.ops[1], free.ops[1], with_limit / free.ops[1]);
  EXPECT_GE(with_limit, 0.7 * free.ops[1]);

  // Refused values and keys.
  auto [bad_rc, bad_text] = ctl({"set", "1/51712", "qos-write-iops=lots"});
  EXPECT_EQ(bad_rc, ctl::kExitRpcError) << bad_text;
  auto [nokey_rc, nokey_text] = ctl({"set", "1/51712", "rate=1,1"});
  EXPECT_EQ(nokey_rc, ctl::kExitRpcError);
  EXPECT_NE(nokey_text.find("qos-read-iops"), std::string::npos) << nokey_text;  // lists what there is
}

// A throttled queue alone on its worker: the worker sleeps between timer
// wake-ups instead of spinning on the full ring, and the limit holds the
// load back (a lower bound from the limit itself, not from the machine).
TEST(BlkQosHost, ThrottledQueueLetsItsWorkerSleep) {
  spdlog::set_level(spdlog::level::warn);
  sim::SimBlkHost::Options o;
  o.workers = 1;
  o.guest_pages = 16384;
  auto h = sim::SimBlkHost::create(o);
  ASSERT_TRUE(h) << error_string(h.error());
  sim::SimBlkHost& host = **h;
  auto ev = host.open_guest_event_channel();
  ASSERT_TRUE(ev);
  test::TempFile file(8 << 20);
  auto d = host.attach(51712, file.path, {}, **ev);
  ASSERT_TRUE(d) << error_string(d.error());
  // The toolstack's runtime write of the key; the backend's watch applies it.
  auto xs = host.host().open_xenstore(kDom0);
  ASSERT_TRUE(xs);
  const std::string key = fmt::format("/local/domain/0/backend/vbd/{}/51712/qos-read-iops", o.guest);
  ASSERT_TRUE((*xs)->write(kXsNoTxn, key, "200"));
  // (The control thread stores it once; read here only to wait for it.)
  ASSERT_TRUE(eventually([&] { return host.device(51712)->qos().read_iops == 200; }));

  sim::BlkLoadSpec spec;
  spec.queue_depth = 32;
  spec.read_percent = 100;
  spec.max_ops = 400;
  auto load = sim::BlkLoad::create(*(*d)->queues[0], (*d)->bytes, spec, 51712);
  ASSERT_TRUE(load);
  std::vector<sim::BlkLoad*> loads = {load->get()};
  auto cpu = [&] {
    timespec ts{};
    clock_gettime(host.worker_clocks()[0], &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  };
  const double cpu0 = cpu();
  const auto t0 = Clock::now();
  for (bool done = false; !done;) {
    if (sim::BlkLoad::poll_all(loads, done) == 0 && !done) {
      ASSERT_TRUE(sim::BlkLoad::wait_any(loads, 10ms));
    }
    ASSERT_LT(Clock::now() - t0, 20s);
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double busy = cpu() - cpu0;
  std::printf("400 reads at qos-read-iops=200: %.2f s, worker CPU %.3f s (%.1f %%)\n", wall, busy, 100 * busy / wall);
  EXPECT_EQ((*load)->stats().errors.get(), 0u);
  // 400 requests, 20 of them in the burst (100 ms), the rest at 200/s.
  EXPECT_GE(wall, 380.0 / 200 * 0.95);
  EXPECT_LT(busy, 0.2 * wall) << "the throttled worker spun";
  const nlohmann::json show = [&] {
    nlohmann::json j;
    host.device(51712)->describe(j, false);
    return j;
  }();
  EXPECT_GT(show["qos"]["delayed"].get<uint64_t>(), 300u) << show.dump();
  EXPECT_GT(show["qos"]["throttled_seconds"].get<double>(), 1.0) << show.dump();
}

}  // namespace
}  // namespace xenpath
