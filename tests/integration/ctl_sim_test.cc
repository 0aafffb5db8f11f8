// Operations end to end on the simulated host: `xenpath-sim blkback` (the
// daemon with simulated guests doing verified I/O, in-process on its own
// thread) with a control socket and a metrics endpoint; xenpath-ctl's
// commands against it (list shows the guests' VBDs, show and stats return
// counters that grow, set changes the log level and refuses unknown keys),
// and a Prometheus scrape whose vbd counters are the same and grow.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "common/ctl_server.h"
#include "tests/fixtures/blk_demo_run.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using test::eventually;

// GET http://127.0.0.1:<port>/metrics, the body ("" on failure).
std::string scrape(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return {};
  }
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string resp;
  char b[8192];
  ssize_t n;
  while ((n = ::recv(fd, b, sizeof(b), 0)) > 0) resp.append(b, static_cast<size_t>(n));
  ::close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos || resp.rfind("HTTP/1.1 200", 0) != 0 ? std::string() : resp.substr(body + 4);
}

// The value of the sample `name{labels}` in an exposition, -1 if absent.
double sample(const std::string& text, const std::string& name_and_labels) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name_and_labels + " ", 0) == 0) return std::stod(line.substr(name_and_labels.size() + 1));
  }
  return -1;
}

class CtlSim : public ::testing::Test {
 protected:
  void SetUp() override {
    run_.start([](DaemonCli& cli, sim::BlkDemoOptions& opt, VbdOptions&) {
      cli.daemon.workers = 2;
      cli.daemon.metrics_listen = "127.0.0.1:0";
      opt.run.seconds = 12;
      opt.queues = 2;
    });
    dir_ = run_.dir();
    socket_ = run_.socket();
  }
  void TearDown() override {
    // The run ends at its deadline: it must end with its self-check passed.
    EXPECT_EQ(run_.join(), 0);
    EXPECT_FALSE(std::filesystem::exists(socket_)) << "the socket outlived the daemon";
  }
  std::pair<int, std::string> ctl(std::vector<std::string> args) { return run_.ctl(std::move(args)); }
  nlohmann::json ctl_json(std::vector<std::string> args) { return run_.ctl_json(std::move(args)); }

  test::BlkDemoRun run_;
  std::string dir_, socket_;
};

TEST_F(CtlSim, ListShowStatsSetAndMetricsAgainstTheSimulatedHost) {
  // Both guests' disks connected, as list reports them.
  ASSERT_TRUE(run_.wait_connected(2, 15s));
  const nlohmann::json list = ctl_json({"list"});
  ASSERT_EQ(list["devices"].size(), 2u);
  EXPECT_EQ(list["daemon"], "xenpath-blkback");
  for (const auto& d : list["devices"]) {
    EXPECT_EQ(d["type"], "vbd");
    EXPECT_EQ(d["devid"], 51712);
    EXPECT_EQ(d["queues"], 2);
    EXPECT_NE(d["image"].get<std::string>().find(dir_ + "/images/"), std::string::npos);
  }
  // The table names both.
  auto [rc, table] = ctl({"list"});
  EXPECT_EQ(rc, 0);
  EXPECT_NE(table.find("vbd/1/51712"), std::string::npos) << table;
  EXPECT_NE(table.find("vbd/2/51712"), std::string::npos) << table;
  EXPECT_NE(table.find("Connected"), std::string::npos) << table;

  // show: negotiated features, rings, persistent grants, per-queue counters.
  nlohmann::json show = ctl_json({"show", "1/51712"});
  EXPECT_EQ(show["device"], "vbd/1/51712");
  EXPECT_EQ(show["features"]["persistent"], true);
  EXPECT_FALSE(show["features"]["protocol"].get<std::string>().empty());
  ASSERT_EQ(show["per_queue"].size(), 2u);
  for (const auto& q : show["per_queue"]) {
    EXPECT_TRUE(q.contains("ring_order"));
    EXPECT_TRUE(q.contains("event_channel"));
    EXPECT_GT(q["persistent_grants"]["mapped_pages"].get<uint64_t>(), 0u) << q.dump();
  }
  auto [src, show_text] = ctl({"show", "vbd/2/51712"});
  EXPECT_EQ(src, 0);
  EXPECT_NE(show_text.find("persistent_grants"), std::string::npos) << show_text;

  // stats: the counters grow between two calls.
  auto reads_of = [](const nlohmann::json& stats, int dom) {
    for (const auto& d : stats["devices"]) {
      if (d["frontend"] == dom) return d["reads"].get<uint64_t>() + d["writes"].get<uint64_t>();
    }
    return uint64_t{0};
  };
  const nlohmann::json s1 = ctl_json({"stats"});
  const uint64_t ops1 = reads_of(s1, 1);
  EXPECT_GT(ops1, 0u);
  EXPECT_TRUE(eventually([&] { return reads_of(ctl_json({"stats"}), 1) > ops1; }));
  auto [wrc, watch] = ctl({"stats", "--watch", "--interval", "0.3", "--count", "2"});
  EXPECT_EQ(wrc, 0);
  EXPECT_NE(watch.find("r/s"), std::string::npos) << watch;
  EXPECT_NE(watch.find("vbd/1/51712"), std::string::npos) << watch;

  // set: the log level is a real daemon knob; a vbd has its QoS keys and `cache`
  // (blk_cache_test.cc), not `rate`.
  ASSERT_EQ(ctl({"set", "log_level=error"}).first, 0);
  EXPECT_EQ(spdlog::get_level(), spdlog::level::err);
  ASSERT_EQ(ctl({"set", "log_level=warn"}).first, 0);
  auto [bad, bad_text] = ctl({"set", "log_level=loud"});
  EXPECT_EQ(bad, ctl::kExitRpcError) << bad_text;
  auto [norate, norate_text] = ctl({"set", "vbd/1/51712", "rate=1,1"});
  EXPECT_EQ(norate, ctl::kExitRpcError);
  EXPECT_NE(norate_text.find("no setting 'rate'"), std::string::npos) << norate_text;
  EXPECT_NE(norate_text.find("qos-read-iops"), std::string::npos) << norate_text;
  auto [nodev, nodev_text] = ctl({"show", "9/51712"});
  EXPECT_EQ(nodev, ctl::kExitRpcError);
  EXPECT_NE(nodev_text.find("no device"), std::string::npos) << nodev_text;

  // version names the metrics endpoint (port 0: the daemon picked one).
  nlohmann::json version = ctl_json({"version"});
  EXPECT_EQ(version["daemon"], "xenpath-blkback");
  EXPECT_EQ(version["ctl_socket"], socket_);
  const std::string addr = version["metrics"].get<std::string>();
  ASSERT_EQ(addr.rfind("127.0.0.1:", 0), 0u) << addr;
  const int port = std::stoi(addr.substr(addr.find(':') + 1));
  ASSERT_GT(port, 0);

  // The scrape: the same counters, growing; the conventions' names.
  const std::string m1 = scrape(port);
  ASSERT_FALSE(m1.empty());
  EXPECT_EQ(sample(m1, R"(xenpath_up{daemon="xenpath-blkback"})"), 1);
  EXPECT_NE(m1.find("# TYPE xenpath_vbd_read_bytes_total counter"), std::string::npos);
  EXPECT_NE(m1.find("# TYPE xenpath_vbd_queue_in_flight_requests gauge"), std::string::npos);
  EXPECT_EQ(sample(m1, R"(xenpath_vbd_qos_delayed_requests_total{device="51712",domain="1"})"), 0) << m1;
  EXPECT_EQ(sample(m1, R"(xenpath_vbd_qos_throttled_seconds_total{device="51712",domain="2"})"), 0) << m1;
  EXPECT_NE(m1.find("xenpath_build_info{"), std::string::npos);
  // Timed (on with the metrics endpoint): guest 1's reads on queue 0 are in
  // its histogram, whose +Inf bucket is its count, and in the time total.
  EXPECT_NE(m1.find("# TYPE xenpath_vbd_read_latency_seconds histogram"), std::string::npos);
  const double timed_reads =
      sample(m1, R"(xenpath_vbd_read_latency_seconds_bucket{device="51712",domain="1",queue="0",le="+Inf"})");
  EXPECT_GT(timed_reads, 0);
  EXPECT_EQ(timed_reads, sample(m1, R"(xenpath_vbd_read_latency_seconds_count{device="51712",domain="1",queue="0"})"));
  EXPECT_GT(sample(m1, R"(xenpath_vbd_read_time_seconds_total{device="51712",domain="1"})"), 0);
  const std::string reads = R"(xenpath_vbd_read_requests_total{device="51712",domain="1"})";
  const std::string rbytes = R"(xenpath_vbd_read_bytes_total{device="51712",domain="1"})";
  const double r1 = sample(m1, reads);
  EXPECT_GT(r1, 0) << m1;
  EXPECT_GE(sample(m1, rbytes), r1 * 4096);  // 4 KiB reads
  EXPECT_GE(sample(m1, R"(xenpath_vbd_queue_in_flight_requests{device="51712",domain="2",queue="1"})"), 0) << m1;
  EXPECT_TRUE(eventually([&] { return sample(scrape(port), reads) > r1; }));
}

}  // namespace
}  // namespace xenpath
