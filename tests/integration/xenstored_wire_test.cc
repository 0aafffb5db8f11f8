// The production libxenstore adapter against the simulated xenstored over
// its unix socket, raw wire-protocol abuse, in-process guest connections,
// and xenstore-utils interoperability.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/libxen/libxen_store.h"
#include "common/xen/xenstore.h"
#include "sim/sim_xenstored.h"
#include "tests/fixtures/unix_client.h"

extern char** environ;

namespace xenpath::sim {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using namespace std::chrono_literals;

constexpr XsPerm P(DomId d, XsPerm::Access a) { return XsPerm{d, a}; }

template <typename F>
bool wait_until(F&& cond, std::chrono::milliseconds limit = 3000ms) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Waits for watch_fd and collects at least `n` events (or times out).
std::vector<XsWatchEvent> wait_events(XenStore& xs, size_t n, std::chrono::milliseconds limit = 3000ms) {
  std::vector<XsWatchEvent> out;
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (out.size() < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd pfd{xs.watch_fd(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) break;
    xs.read_watches(out, 64);
  }
  return out;
}

std::vector<std::string> paths_of(const std::vector<XsWatchEvent>& evs) {
  std::vector<std::string> out;
  for (const auto& e : evs) out.push_back(e.path);
  return out;
}

class XenstoredWireTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto sx = SimXenstored::start("");
    ASSERT_TRUE(sx) << error_string(sx.error());
    xsd = std::move(*sx);
    auto xs = LibxenStore::open(xsd->socket_path());
    ASSERT_TRUE(xs) << error_string(xs.error());
    dom0 = std::move(*xs);
  }

  std::unique_ptr<XenStore> open_socket_client() {
    auto xs = LibxenStore::open(xsd->socket_path());
    EXPECT_TRUE(xs) << error_string(xs.error());
    return xs ? std::move(*xs) : nullptr;
  }

  std::unique_ptr<SimXenstored> xsd;
  std::unique_ptr<XenStore> dom0;  // LibxenStore over the socket
};

// ------------------------------------------------------------------ LibxenStore

TEST_F(XenstoredWireTest, EveryXenStoreMethodOverTheWire) {
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/vm/1/name", "guest"));
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/vm/1/name"), "guest");
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/vm/1/blob", std::string("a\0b\xff", 4)));
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/vm/1/blob"), std::string("a\0b\xff", 4));
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/vm/1/empty", ""));
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/vm/1/empty"), "");
  ASSERT_TRUE(dom0->mkdir(kXsNoTxn, "/vm/1/dir"));
  ASSERT_TRUE(dom0->mkdir(kXsNoTxn, "/vm/1/dir"));
  EXPECT_THAT(*dom0->directory(kXsNoTxn, "/vm/1"), ElementsAre("blob", "dir", "empty", "name"));
  EXPECT_THAT(*dom0->directory(kXsNoTxn, "/vm/1/dir"), IsEmpty());
  ASSERT_TRUE(dom0->rm(kXsNoTxn, "/vm/1/dir"));
  EXPECT_EQ(dom0->read(kXsNoTxn, "/vm/1/dir").error(), ENOENT);
  EXPECT_EQ(dom0->rm(kXsNoTxn, "/vm/2/x").error(), ENOENT);
  EXPECT_EQ(dom0->read(kXsNoTxn, "/bad//path").error(), EINVAL);
  EXPECT_EQ(dom0->read(kXsNoTxn, std::string("/nul\0", 5)).error(), EINVAL);

  const XsPerm perms[] = {P(3, XsPerm::kNone), P(5, XsPerm::kRead), P(6, XsPerm::kWrite), P(7, XsPerm::kBoth)};
  ASSERT_TRUE(dom0->set_permissions(kXsNoTxn, "/vm/1/name", perms));
  EXPECT_THAT(*dom0->get_permissions(kXsNoTxn, "/vm/1/name"),
              ElementsAre(P(3, XsPerm::kNone), P(5, XsPerm::kRead), P(6, XsPerm::kWrite), P(7, XsPerm::kBoth)));
  EXPECT_EQ(dom0->set_permissions(kXsNoTxn, "/vm/1/name", {}).error(), EINVAL);

  EXPECT_EQ(*dom0->domain_path(5), "/local/domain/5");
  EXPECT_EQ(*dom0->domain_path(0), "/local/domain/0");

  auto t = dom0->transaction_start();
  ASSERT_TRUE(t);
  ASSERT_TRUE(dom0->write(*t, "/vm/1/txn", "inside"));
  EXPECT_EQ(*dom0->read(*t, "/vm/1/txn"), "inside");
  EXPECT_EQ(dom0->read(kXsNoTxn, "/vm/1/txn").error(), ENOENT);
  ASSERT_TRUE(dom0->transaction_end(*t, true));
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/vm/1/txn"), "inside");
  auto aborted = dom0->transaction_start();
  ASSERT_TRUE(dom0->rm(*aborted, "/vm/1/txn"));
  ASSERT_TRUE(dom0->transaction_end(*aborted, false));
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/vm/1/txn"), "inside");
  EXPECT_EQ(dom0->transaction_end(*aborted, true).error(), ENOENT);

  XsOpStats s = xsd->socket_stats();
  EXPECT_EQ(s.by_type[XS_WRITE], 4u);
  EXPECT_EQ(s.transactions, 2u);
  EXPECT_EQ(xsd->open_transactions(), 0u);
}

TEST_F(XenstoredWireTest, LongDirectoriesComeBackInParts) {
  // > XENSTORE_PAYLOAD_MAX of names: XS_DIRECTORY is E2BIG and libxenstore
  // falls back to XS_DIRECTORY_PART.
  std::vector<std::string> want;
  auto t = dom0->transaction_start();
  for (int i = 0; i < 300; ++i) {
    std::string name = "a-rather-long-child-name-" + std::to_string(1000 + i);
    want.push_back(name);
    ASSERT_TRUE(dom0->mkdir(*t, "/many/" + name));
  }
  ASSERT_TRUE(dom0->transaction_end(*t, true));
  auto got = dom0->directory(kXsNoTxn, "/many");
  ASSERT_TRUE(got) << error_string(got.error());
  EXPECT_EQ(*got, want);
  EXPECT_GE(xsd->socket_stats().by_type[XS_DIRECTORY_PART], 2u);
}

TEST_F(XenstoredWireTest, WatchEventsArriveThroughTheFd) {
  ASSERT_TRUE(dom0->watch("/w", "tok"));
  auto initial = wait_events(*dom0, 1);
  ASSERT_EQ(initial.size(), 1u);
  EXPECT_EQ(initial[0].path, "/w");
  EXPECT_EQ(initial[0].token, "tok");

  ASSERT_TRUE(dom0->write(kXsNoTxn, "/w/a", "1"));
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/unrelated", "1"));
  ASSERT_TRUE(dom0->rm(kXsNoTxn, "/w/a"));
  auto evs = wait_events(*dom0, 2);
  EXPECT_THAT(paths_of(evs), ElementsAre("/w/a", "/w/a"));

  // Nothing more pending: the fd is quiet and read_watches returns nothing.
  std::vector<XsWatchEvent> none;
  EXPECT_EQ(dom0->read_watches(none, 8), 0u);
  pollfd pfd{dom0->watch_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 0), 0);

  EXPECT_EQ(xsd->watch_count(), 1u);
  ASSERT_TRUE(dom0->unwatch("/w", "tok"));
  EXPECT_EQ(dom0->unwatch("/w", "tok").error(), ENOENT);
  EXPECT_EQ(xsd->watch_count(), 0u);
  EXPECT_EQ(dom0->watch("/w", std::string("t\0", 2)).error(), EINVAL);
}

TEST_F(XenstoredWireTest, EventsFromOtherConnectionsWakeTheServer) {
  auto other = open_socket_client();
  auto guest_tools = xsd->connect(0);  // an in-process toolstack
  ASSERT_TRUE(other && guest_tools);
  ASSERT_TRUE(dom0->watch("/shared", "s"));
  ASSERT_EQ(wait_events(*dom0, 1).size(), 1u);
  ASSERT_TRUE(other->write(kXsNoTxn, "/shared/from-socket", "1"));
  ASSERT_TRUE((*guest_tools)->write(kXsNoTxn, "/shared/in-process", "1"));
  EXPECT_THAT(paths_of(wait_events(*dom0, 2)), ElementsAre("/shared/from-socket", "/shared/in-process"));
}

// ------------------------------------------------------------------ transactions

TEST_F(XenstoredWireTest, RacingTransactionsOneGetsEagainAndRetrySucceeds) {
  auto b = open_socket_client();
  ASSERT_TRUE(b);
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/race/counter", "0"));

  auto ta = dom0->transaction_start();
  auto tb = b->transaction_start();
  ASSERT_TRUE(ta && tb);
  EXPECT_EQ(*dom0->read(*ta, "/race/counter"), "0");
  EXPECT_EQ(*b->read(*tb, "/race/counter"), "0");
  ASSERT_TRUE(b->write(*tb, "/race/counter", "1"));
  ASSERT_TRUE(b->transaction_end(*tb, true));
  ASSERT_TRUE(dom0->write(*ta, "/race/counter", "1"));
  EXPECT_EQ(dom0->transaction_end(*ta, true).error(), EAGAIN);
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/race/counter"), "1");

  // run_transaction() redoes the read-modify-write and gets through.
  int attempts = 0;
  auto r = run_transaction(*dom0, [&](XsTxn t) -> Result<int> {
    ++attempts;
    XP_ASSIGN_OR_RETURN(std::string v, dom0->read(t, "/race/counter"));
    if (attempts == 1) {
      // Somebody commits under our feet the first time round.
      EXPECT_TRUE(b->write(kXsNoTxn, "/race/counter", std::to_string(std::stoi(v) + 10)));
    }
    int next = std::stoi(v) + 1;
    XP_TRY(dom0->write(t, "/race/counter", std::to_string(next)));
    return next;
  });
  ASSERT_TRUE(r) << error_string(r.error());
  EXPECT_EQ(attempts, 2);
  EXPECT_EQ(*r, 12);
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/race/counter"), "12");
  EXPECT_EQ(xsd->socket_stats().conflicts, 2u);
}

TEST_F(XenstoredWireTest, ConcurrentIncrementsNeverLoseAnUpdate) {
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/inc", "0"));
  xsd->reset_stats();
  constexpr int kPerThread = 25;
  std::atomic<int> attempts{0};
  auto worker = [&] {
    auto xs = LibxenStore::open(xsd->socket_path());
    ASSERT_TRUE(xs);
    for (int i = 0; i < kPerThread; ++i) {
      auto r = run_transaction(
          **xs,
          [&](XsTxn t) -> Result<int> {
            attempts.fetch_add(1);
            XP_ASSIGN_OR_RETURN(std::string v, (*xs)->read(t, "/inc"));
            XP_TRY((*xs)->write(t, "/inc", std::to_string(std::stoi(v) + 1)));
            return 0;
          },
          1000);
      ASSERT_TRUE(r) << error_string(r.error());
    }
  };
  std::thread t1(worker), t2(worker);
  t1.join();
  t2.join();
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/inc"), std::to_string(2 * kPerThread));
  // Every attempt beyond the successful ones was refused with EAGAIN.
  EXPECT_EQ(xsd->socket_stats().conflicts, static_cast<uint64_t>(attempts.load() - 2 * kPerThread));
}

TEST_F(XenstoredWireTest, DisjointDeviceTransactionsBothCommit) {
  auto b = open_socket_client();
  ASSERT_TRUE(b);
  ASSERT_TRUE(dom0->mkdir(kXsNoTxn, "/local/domain/0/backend/vbd"));
  auto ta = dom0->transaction_start();
  auto tb = b->transaction_start();
  ASSERT_TRUE(dom0->write(*ta, "/local/domain/0/backend/vbd/5/51712/state", "1"));
  ASSERT_TRUE(b->write(*tb, "/local/domain/0/backend/vbd/6/51712/state", "1"));
  EXPECT_TRUE(dom0->transaction_end(*ta, true));
  EXPECT_TRUE(b->transaction_end(*tb, true));
  EXPECT_THAT(*dom0->directory(kXsNoTxn, "/local/domain/0/backend/vbd"), ElementsAre("5", "6"));
}

TEST_F(XenstoredWireTest, ClosedConnectionTakesItsWatchesAndTransactions) {
  {
    auto c = open_socket_client();
    ASSERT_TRUE(c);
    ASSERT_TRUE(c->watch("/gone", "w"));
    auto t = c->transaction_start();
    ASSERT_TRUE(t);
    ASSERT_TRUE(c->write(*t, "/gone/x", "never committed"));
    EXPECT_EQ(xsd->watch_count(), 1u);
    EXPECT_EQ(xsd->open_transactions(), 1u);
  }
  EXPECT_TRUE(wait_until([&] { return xsd->watch_count() == 0 && xsd->open_transactions() == 0; }));
  EXPECT_TRUE(wait_until([&] { return xsd->socket_connections() == 1; }));
  EXPECT_EQ(dom0->read(kXsNoTxn, "/gone/x").error(), ENOENT);
}

// ------------------------------------------------------------------ guests

TEST_F(XenstoredWireTest, GuestConnectionIsDeniedDom0NodesButAllowedWhereGranted) {
  xsd->introduce_domain(5);
  auto guest = xsd->connect(5);
  ASSERT_TRUE(guest);
  XenStore& g = **guest;

  ASSERT_TRUE(dom0->write(kXsNoTxn, "/dom0-only/secret", "s"));
  EXPECT_EQ(g.read(kXsNoTxn, "/dom0-only/secret").error(), EACCES);
  EXPECT_EQ(g.write(kXsNoTxn, "/dom0-only/secret", "x").error(), EACCES);
  EXPECT_EQ(g.directory(kXsNoTxn, "/dom0-only").error(), EACCES);

  // The toolstack gives the guest its home and a readable backend node.
  ASSERT_TRUE(dom0->mkdir(kXsNoTxn, "/local/domain/5"));
  const XsPerm home[] = {P(5, XsPerm::kNone)};
  ASSERT_TRUE(dom0->set_permissions(kXsNoTxn, "/local/domain/5", home));
  const std::string be = "/local/domain/0/backend/vbd/5/51712";
  ASSERT_TRUE(dom0->write(kXsNoTxn, be + "/state", "1"));
  const XsPerm be_perms[] = {P(0, XsPerm::kNone), P(5, XsPerm::kRead)};
  ASSERT_TRUE(dom0->set_permissions(kXsNoTxn, be, be_perms));
  ASSERT_TRUE(dom0->set_permissions(kXsNoTxn, be + "/state", be_perms));

  ASSERT_TRUE(g.write(kXsNoTxn, "device/vbd/51712/state", "3"));
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/local/domain/5/device/vbd/51712/state"), "3");
  EXPECT_THAT(*dom0->get_permissions(kXsNoTxn, "/local/domain/5/device/vbd/51712/state"),
              ElementsAre(P(5, XsPerm::kNone)));
  EXPECT_EQ(*g.read(kXsNoTxn, be + "/state"), "1");
  EXPECT_EQ(g.write(kXsNoTxn, be + "/state", "6").error(), EACCES);
  EXPECT_EQ(*g.domain_path(5), "/local/domain/5");

  // The guest watches the backend state; the daemon's write reaches it
  // through the in-process eventfd.
  ASSERT_TRUE(g.watch(be + "/state", "be"));
  ASSERT_EQ(wait_events(g, 1).size(), 1u);
  ASSERT_TRUE(dom0->write(kXsNoTxn, be + "/state", "4"));
  auto evs = wait_events(g, 1);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].path, be + "/state");
  EXPECT_EQ(evs[0].token, "be");
  pollfd pfd{g.watch_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 0), 0);  // drained: no longer readable

  // And the daemon sees the guest's frontend changes.
  ASSERT_TRUE(dom0->watch("/local/domain/5/device", "fe"));
  ASSERT_EQ(wait_events(*dom0, 1).size(), 1u);
  ASSERT_TRUE(g.write(kXsNoTxn, "device/vbd/51712/state", "4"));
  EXPECT_THAT(paths_of(wait_events(*dom0, 1)), ElementsAre("/local/domain/5/device/vbd/51712/state"));

  EXPECT_GE(xsd->domain_stats(5).by_type[XS_WRITE], 2u);
}

TEST_F(XenstoredWireTest, InProcessWatchFdIsReadableExactlyWhileEventsAreQueued) {
  auto guest = xsd->connect(0);
  ASSERT_TRUE(guest);
  XenStore& g = **guest;
  auto readable = [&] {
    pollfd pfd{g.watch_fd(), POLLIN, 0};
    return ::poll(&pfd, 1, 0) == 1;
  };
  EXPECT_FALSE(readable());
  ASSERT_TRUE(g.watch("/lt", "w"));
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/lt/a", "1"));
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/lt/b", "1"));
  EXPECT_TRUE(readable());
  std::vector<XsWatchEvent> evs;
  EXPECT_EQ(g.read_watches(evs, 2), 2u);
  EXPECT_TRUE(readable());  // one still queued
  EXPECT_EQ(g.read_watches(evs, 8), 1u);
  EXPECT_FALSE(readable());
  EXPECT_THAT(paths_of(evs), ElementsAre("/lt", "/lt/a", "/lt/b"));
  EXPECT_EQ(g.read_watches(evs, 8), 0u);
}

TEST_F(XenstoredWireTest, DomainLifecycleEventsReachSocketWatchers) {
  ASSERT_TRUE(dom0->watch("@introduceDomain", "i"));
  ASSERT_TRUE(dom0->watch("@releaseDomain", "r"));
  ASSERT_EQ(wait_events(*dom0, 2).size(), 2u);
  xsd->introduce_domain(12);
  EXPECT_THAT(paths_of(wait_events(*dom0, 1)), ElementsAre("@introduceDomain"));
  xsd->release_domain(12);
  EXPECT_THAT(paths_of(wait_events(*dom0, 1)), ElementsAre("@releaseDomain"));
}

// ------------------------------------------------------------------ raw wire

class RawClient : public test::UnixStreamClient {
 public:
  using UnixStreamClient::UnixStreamClient;
  static std::string message(uint32_t type, uint32_t req_id, uint32_t tx_id, std::string_view body) {
    xsd_sockmsg h{type, req_id, tx_id, static_cast<uint32_t>(body.size())};
    std::string out(reinterpret_cast<const char*>(&h), sizeof(h));
    out.append(body);
    return out;
  }

  struct Msg {
    xsd_sockmsg hdr;
    std::string body;
  };
  std::optional<Msg> recv_msg(std::chrono::milliseconds limit = 3000ms) {
    Msg m{};
    const auto deadline = std::chrono::steady_clock::now() + limit;
    if (!recv_exact(reinterpret_cast<char*>(&m.hdr), sizeof(m.hdr), deadline)) return std::nullopt;
    if (m.hdr.len > XENSTORE_PAYLOAD_MAX) return std::nullopt;
    m.body.resize(m.hdr.len);
    if (!recv_exact(m.body.data(), m.hdr.len, deadline)) return std::nullopt;
    return m;
  }

 private:
  bool recv_exact(char* p, size_t n, std::chrono::steady_clock::time_point deadline) {
    while (n > 0) {
      const ssize_t r = recv_some(p, n, left(deadline));
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
};

TEST_F(XenstoredWireTest, RawRepliesEchoIdsAndCarryErrnoNames) {
  RawClient c(xsd->socket_path());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send_raw(RawClient::message(XS_READ, 41, 0, std::string("/nope\0", 6))));
  auto m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.type, uint32_t{XS_ERROR});
  EXPECT_EQ(m->hdr.req_id, 41u);
  EXPECT_EQ(m->body, std::string("ENOENT\0", 7));

  // Unknown request types are ENOSYS, not fatal.
  ASSERT_TRUE(c.send_raw(RawClient::message(9999, 77, 0, std::string("x\0", 2))));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.type, uint32_t{XS_ERROR});
  EXPECT_EQ(m->hdr.req_id, 77u);
  EXPECT_EQ(m->body, std::string("ENOSYS\0", 7));

  // A transaction id nobody started.
  ASSERT_TRUE(c.send_raw(RawClient::message(XS_READ, 5, 1234, std::string("/\0", 2))));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.tx_id, 1234u);
  EXPECT_EQ(m->body, std::string("ENOENT\0", 7));

  // XS_WATCH: "OK" first, then the initial event with req_id 0 / tx_id 0.
  ASSERT_TRUE(c.send_raw(RawClient::message(XS_WATCH, 9, 0, std::string("/p\0tok\0", 7))));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.type, uint32_t{XS_WATCH});
  EXPECT_EQ(m->hdr.req_id, 9u);
  EXPECT_EQ(m->body, std::string("OK\0", 3));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.type, uint32_t{XS_WATCH_EVENT});
  EXPECT_EQ(m->hdr.req_id, 0u);
  EXPECT_EQ(m->hdr.tx_id, 0u);
  EXPECT_EQ(m->body, std::string("/p\0tok\0", 7));

  // Transaction start answers a decimal id; the reply of a request inside
  // it echoes that tx_id.
  ASSERT_TRUE(c.send_raw(RawClient::message(XS_TRANSACTION_START, 10, 0, std::string("\0", 1))));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  ASSERT_EQ(m->hdr.type, uint32_t{XS_TRANSACTION_START});
  uint32_t tx = static_cast<uint32_t>(std::stoul(m->body));
  EXPECT_NE(tx, 0u);
  ASSERT_TRUE(c.send_raw(RawClient::message(XS_WRITE, 11, tx, std::string("/p/x\0val", 8))));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.type, uint32_t{XS_WRITE});
  EXPECT_EQ(m->hdr.tx_id, tx);
  EXPECT_EQ(m->body, std::string("OK\0", 3));
  ASSERT_TRUE(c.send_raw(RawClient::message(XS_TRANSACTION_END, 12, tx, std::string("T\0", 2))));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->body, std::string("OK\0", 3));
  m = c.recv_msg();  // the commit fires the watch on /p
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.type, uint32_t{XS_WATCH_EVENT});
  EXPECT_EQ(m->body, std::string("/p/x\0tok\0", 9));
}

TEST_F(XenstoredWireTest, SplitAndPipelinedMessagesAreReassembled) {
  RawClient c(xsd->socket_path());
  ASSERT_TRUE(c.connected());
  std::string req = RawClient::message(XS_WRITE, 1, 0, std::string("/split\0hello", 12));
  // Byte by byte: the server must cope with any partial read.
  for (char ch : req) {
    ASSERT_TRUE(c.send_raw(std::string_view(&ch, 1)));
    std::this_thread::sleep_for(100us);
  }
  auto m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.req_id, 1u);
  EXPECT_EQ(m->body, std::string("OK\0", 3));
  // Several requests in one send: answered in order.
  std::string two = RawClient::message(XS_READ, 2, 0, std::string("/split\0", 7)) +
                    RawClient::message(XS_DIRECTORY, 3, 0, std::string("/\0", 2));
  ASSERT_TRUE(c.send_raw(two));
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.req_id, 2u);
  EXPECT_EQ(m->body, "hello");
  m = c.recv_msg();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hdr.req_id, 3u);
  EXPECT_EQ(m->body, std::string("split\0tool\0", 11));
}

TEST_F(XenstoredWireTest, GarbageAndAbandonedClientsDoNotHurtTheServer) {
  {
    RawClient oversize(xsd->socket_path());
    ASSERT_TRUE(oversize.connected());
    ASSERT_TRUE(oversize.send_raw(RawClient::message(XS_WRITE, 1, 0, "").substr(0, 12) +
                                  std::string("\xff\xff\xff\x7f", 4)));  // len = 0x7fffffff
    EXPECT_TRUE(oversize.closed_by_server());
  }
  {
    RawClient junk(xsd->socket_path());
    ASSERT_TRUE(junk.connected());
    std::string bytes;
    uint32_t x = 12345;
    for (int i = 0; i < 4096; ++i) {
      x = x * 1103515245 + 12345;
      bytes.push_back(static_cast<char>(x >> 16));
    }
    ASSERT_TRUE(junk.send_raw(bytes));  // whatever it parses as, it must not crash us
  }
  {
    RawClient half(xsd->socket_path());
    ASSERT_TRUE(half.connected());
    // A header announcing 100 bytes, 3 of them sent, then gone.
    ASSERT_TRUE(half.send_raw(RawClient::message(XS_WRITE, 1, 0, std::string(100, 'x')).substr(0, 19)));
  }
  {
    RawClient header_only(xsd->socket_path());
    ASSERT_TRUE(header_only.connected());
    ASSERT_TRUE(header_only.send_raw(RawClient::message(XS_READ, 1, 0, "").substr(0, 7)));
  }
  {
    // Malformed arguments are errors, not disconnects.
    RawClient bad(xsd->socket_path());
    ASSERT_TRUE(bad.connected());
    ASSERT_TRUE(bad.send_raw(RawClient::message(XS_READ, 1, 0, "no-nul")));
    auto m = bad.recv_msg();
    ASSERT_TRUE(m);
    EXPECT_EQ(m->body, std::string("EINVAL\0", 7));
    ASSERT_TRUE(bad.send_raw(RawClient::message(XS_SET_PERMS, 2, 0, std::string("/\0x5\0", 5))));
    m = bad.recv_msg();
    ASSERT_TRUE(m);
    EXPECT_EQ(m->body, std::string("EINVAL\0", 7));
    ASSERT_TRUE(bad.send_raw(RawClient::message(XS_TRANSACTION_END, 3, 0, std::string("T\0", 2))));
    m = bad.recv_msg();
    ASSERT_TRUE(m);
    EXPECT_EQ(m->body, std::string("ENOENT\0", 7));
  }
  // Still serving, and every abandoned connection was cleaned up.
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/alive", "yes"));
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/alive"), "yes");
  EXPECT_TRUE(wait_until([&] { return xsd->socket_connections() == 1; }));
  EXPECT_TRUE(wait_until([&] { return xsd->watch_count() == 0 && xsd->open_transactions() == 0; }));
}

// ------------------------------------------------------------------ lifecycle

TEST(SimXenstoredStartTest, SocketPathRules) {
  char dir_tmpl[] = "/tmp/xenpath-xs-test.XXXXXX";
  ASSERT_NE(::mkdtemp(dir_tmpl), nullptr);
  const std::string dir = dir_tmpl;
  const std::string path = dir + "/xs.sock";
  struct stat st {};
  {
    auto a = SimXenstored::start(path);
    ASSERT_TRUE(a) << error_string(a.error());
    EXPECT_EQ((*a)->socket_path(), path);
    EXPECT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    auto b = SimXenstored::start(path);  // somebody is listening there
    EXPECT_EQ(b.error(), EADDRINUSE);
  }
  EXPECT_NE(::stat(path.c_str(), &st), 0);  // unlinked on destruction

  // A stale socket file (nobody listening) is replaced.
  int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(s);
  {
    auto c = SimXenstored::start(path);
    ASSERT_TRUE(c) << error_string(c.error());
    auto xs = LibxenStore::open(path);
    ASSERT_TRUE(xs);
    EXPECT_EQ(*(*xs)->read(kXsNoTxn, "/tool/xenstored"), "");
  }

  // Something that is not a socket is never deleted.
  const std::string file = dir + "/file";
  int f = ::open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(f, 0);
  ::close(f);
  EXPECT_EQ(SimXenstored::start(file).error(), EEXIST);
  EXPECT_EQ(::stat(file.c_str(), &st), 0);
  ::unlink(file.c_str());

  EXPECT_EQ(LibxenStore::open(dir + "/nobody-here").error(), ENOENT);
  ::rmdir(dir.c_str());
}

TEST(SimXenstoredStartTest, PrivateSocketAndClientsThatOutliveTheServer) {
  std::string path;
  std::unique_ptr<XenStore> guest;
  {
    auto sx = SimXenstored::start("");
    ASSERT_TRUE(sx);
    path = (*sx)->socket_path();
    auto g = (*sx)->connect(3);
    ASSERT_TRUE(g);
    guest = std::move(*g);
    auto xs = LibxenStore::open(path);
    ASSERT_TRUE(xs);
    ASSERT_TRUE((*xs)->watch("/x", "t"));
  }
  struct stat st {};
  EXPECT_NE(::stat(path.c_str(), &st), 0);
  // The in-process store lives on with its last client.
  EXPECT_EQ(guest->read(kXsNoTxn, "/tool").error(), EACCES);
}

// ------------------------------------------------------------------ xenstore-utils

std::string find_tool(const std::string& name) {
  const char* path_env = std::getenv("PATH");
  std::string dirs = path_env != nullptr ? path_env : "/usr/bin:/bin";
  dirs += ":/usr/sbin:/sbin";
  size_t pos = 0;
  while (pos <= dirs.size()) {
    size_t colon = dirs.find(':', pos);
    if (colon == std::string::npos) colon = dirs.size();
    std::string candidate = dirs.substr(pos, colon - pos) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    pos = colon + 1;
  }
  return {};
}

// A child process with XENSTORED_PATH set; stdout+stderr through a pipe.
class Tool {
 public:
  Tool(const std::string& socket, std::vector<std::string> argv) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return;
    out_fd_ = p[0];
    std::vector<std::string> env_store;
    for (char** e = environ; *e != nullptr; ++e)
      if (std::strncmp(*e, "XENSTORED_PATH=", 15) != 0) env_store.emplace_back(*e);
    env_store.push_back("XENSTORED_PATH=" + socket);
    std::vector<char*> envp;
    for (auto& s : env_store) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), envp.data()) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    ::close(p[1]);
  }
  ~Tool() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
  }

  // Output until `lines` newlines were seen or EOF; bounded by `limit`.
  std::string read_output(size_t lines = SIZE_MAX, std::chrono::milliseconds limit = 5000ms) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (static_cast<size_t>(std::count(out_.begin(), out_.end(), '\n')) < lines) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd pfd{out_fd_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) break;
      char buf[4096];
      ssize_t r = ::read(out_fd_, buf, sizeof(buf));
      if (r <= 0) break;
      out_.append(buf, static_cast<size_t>(r));
    }
    return out_;
  }
  // Exit status after EOF (-1 when killed or not started).
  int wait() {
    read_output();
    int status = 0;
    if (pid_ <= 0 || ::waitpid(pid_, &status, 0) != pid_) return -1;
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string out_;
};

class XenstoreUtilsTest : public XenstoredWireTest {
 protected:
  // Runs `name args...` to completion; returns (exit status, output).
  std::pair<int, std::string> run(const std::string& name, std::vector<std::string> args) {
    std::string bin = find_tool(name);
    args.insert(args.begin(), bin);
    Tool t(xsd->socket_path(), std::move(args));
    int rc = t.wait();
    return {rc, t.read_output()};
  }
  void SetUp() override {
    XenstoredWireTest::SetUp();
    for (const char* tool : {"xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-rm", "xenstore-chmod",
                             "xenstore-watch", "xenstore-list", "xenstore-exists"})
      if (find_tool(tool).empty()) GTEST_SKIP() << tool << " not installed (xenstore-utils)";
  }
};

TEST_F(XenstoreUtilsTest, WriteReadLsRmChmodAgainstTheSimulatedStore) {
  auto [rc, out] = run("xenstore-write", {"/utils/a", "1", "/utils/sub/b", "two words"});
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(*dom0->read(kXsNoTxn, "/utils/sub/b"), "two words");

  ASSERT_TRUE(dom0->write(kXsNoTxn, "/utils/esc", std::string("tab\there\n", 9)));
  std::tie(rc, out) = run("xenstore-read", {"/utils/a", "/utils/sub/b", "/utils/esc"});
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "1\ntwo words\ntab\\there\\n\n");

  std::tie(rc, out) = run("xenstore-ls", {"/utils"});
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "a = \"1\"\nesc = \"tab\\there\\n\"\nsub = \"\"\n b = \"two words\"\n");

  std::tie(rc, out) = run("xenstore-list", {"/utils"});
  EXPECT_EQ(out, "a\nesc\nsub\n");

  std::tie(rc, out) = run("xenstore-chmod", {"/utils/a", "n0", "r5", "b7"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(*dom0->get_permissions(kXsNoTxn, "/utils/a"),
              ElementsAre(P(0, XsPerm::kNone), P(5, XsPerm::kRead), P(7, XsPerm::kBoth)));
  std::tie(rc, out) = run("xenstore-ls", {"-p", "/utils/sub"});
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(out, ::testing::HasSubstr("(n0)"));

  std::tie(rc, out) = run("xenstore-rm", {"/utils/sub"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(dom0->read(kXsNoTxn, "/utils/sub/b").error(), ENOENT);
  std::tie(rc, out) = run("xenstore-exists", {"/utils/sub"});
  EXPECT_EQ(rc, 1);
  std::tie(rc, out) = run("xenstore-read", {"/utils/missing"});
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, ::testing::HasSubstr("couldn't read path /utils/missing"));
}

TEST_F(XenstoreUtilsTest, WatchSeesChangesMadeThroughTheAdapter) {
  ASSERT_TRUE(dom0->mkdir(kXsNoTxn, "/watched"));
  size_t before = xsd->watch_count();
  Tool w(xsd->socket_path(), {find_tool("xenstore-watch"), "-n", "2", "/watched"});
  ASSERT_TRUE(wait_until([&] { return xsd->watch_count() == before + 1; }));
  ASSERT_TRUE(dom0->write(kXsNoTxn, "/watched/leaf", "x"));
  EXPECT_EQ(w.read_output(2), "/watched\n/watched/leaf\n");
  EXPECT_EQ(w.wait(), 0);
  EXPECT_TRUE(wait_until([&] { return xsd->watch_count() == before; }));
}

}  // namespace
}  // namespace xenpath::sim
