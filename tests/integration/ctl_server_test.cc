// The control socket (common/ctl_server.h) against real unix sockets on a
// Reactor: JSON-RPC framing, every error a hostile or broken client can
// cause, the limits, the 0600 mode and SO_PEERCRED refusal (a child
// process that drops to another uid), stale-socket takeover; and
// xenpath-ctl's client (tools/ctl) talking to it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "common/ctl_server.h"
#include "common/reactor.h"
#include "tests/fixtures/eventually.h"
#include "tests/fixtures/unix_client.h"
#include "tests/fixtures/vhd_files.h"  // TempDir
#include "tools/ctl/ctl.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using test::eventually;

// A raw client speaking newline-delimited JSON.
class RawClient : public test::UnixStreamClient {
 public:
  using UnixStreamClient::UnixStreamClient;
  bool send(const std::string& s) { return send_raw(s); }
  // The next line, "" on EOF or after 5 s.
  std::string line() {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (buf_.find('\n') == std::string::npos) {
      char b[4096];
      const ssize_t n = recv_some(b, sizeof(b), left(deadline));
      if (n <= 0) break;
      buf_.append(b, static_cast<size_t>(n));
    }
    const size_t nl = buf_.find('\n');
    if (nl == std::string::npos) return {};
    std::string l = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    return l;
  }
  nlohmann::json reply() { return nlohmann::json::parse(line(), nullptr, false); }
  bool closed() { return closed_by_server(2s); }

 private:
  std::string buf_;
};

class CtlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path;
    path_ = dir_ + "/sub/d.sock";  // the directory is created
    Reactor::Options o;
    o.name = "ctl-test";
    o.uring_entries = 0;
    o.poll_window = 0us;
    auto r = Reactor::create(o);
    ASSERT_TRUE(r);
    reactor_ = std::move(*r);
    ASSERT_TRUE(reactor_->start());
  }
  void TearDown() override {
    reactor_->call([&] { server_.reset(); });
    reactor_->stop();
  }
  Status start_server(ControlServer::Options o = {}) {
    o.path = path_;
    Status st = ok();
    reactor_->call([&] {
      auto s = ControlServer::create(*reactor_, o);
      if (!s) {
        st = unexpected(s.error());
        return;
      }
      server_ = std::move(*s);
      server_->add_method("echo", [](const nlohmann::json& p, const ControlServer::Responder& r) { r.result(p); });
      server_->add_method("fail", [](const nlohmann::json&, const ControlServer::Responder& r) {
        r.error(rpc_error::kNoDevice, "no such thing");
      });
      server_->add_method("throws", [](const nlohmann::json& p, const ControlServer::Responder& r) {
        r.result(p.at("missing").get<int>());  // nlohmann throws
      });
      // Answers later, from another task on the reactor (as a method that
      // asked a worker and got the answer posted back).
      server_->add_method("later", [this](const nlohmann::json& p, const ControlServer::Responder& r) {
        std::thread([this, p, r] {
          std::this_thread::sleep_for(20ms);
          reactor_->post([p, r] { r.result({{"later", p}}); });
        }).detach();
      });
      server_->add_method("count", [this](const nlohmann::json&, const ControlServer::Responder& r) {
        ++notified_;
        r.result(notified_.load());
      });
    });
    return st;
  }

  test::TempDir tmp_;
  std::string dir_, path_;
  std::unique_ptr<Reactor> reactor_;
  std::unique_ptr<ControlServer> server_;
  std::atomic<int> notified_{0};
};

TEST_F(CtlServerTest, AnswersRequestsWithTheirIds) {
  ASSERT_TRUE(start_server());
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(R"({"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":7})"
                     "\n"
                     R"({"jsonrpc":"2.0","method":"echo","id":"x"})"
                     "\n"));
  auto r1 = c.reply();
  EXPECT_EQ(r1["id"], 7);
  EXPECT_EQ(r1["result"]["a"], 1);
  EXPECT_EQ(r1["jsonrpc"], "2.0");
  auto r2 = c.reply();
  EXPECT_EQ(r2["id"], "x");
  EXPECT_TRUE(r2["result"].is_object() && r2["result"].empty());
  // Asynchronous answers arrive once posted back.
  ASSERT_TRUE(c.send(R"({"jsonrpc":"2.0","method":"later","params":{"v":3},"id":9})"
                     "\n"));
  auto r3 = c.reply();
  EXPECT_EQ(r3["id"], 9);
  EXPECT_EQ(r3["result"]["later"]["v"], 3);
}

TEST_F(CtlServerTest, MalformedInputGetsJsonRpcErrorsNotACrash) {
  ASSERT_TRUE(start_server());
  RawClient c(path_);
  struct Case {
    const char* line;
    int code;
  };
  const Case cases[] = {
      {"this is not json", rpc_error::kParse},
      {"{\"jsonrpc\":\"2.0\",\"method\":", rpc_error::kParse},
      {"[1,2,3]", rpc_error::kInvalidRequest},
      {"{\"method\":\"echo\",\"id\":1}", rpc_error::kInvalidRequest},                      // no jsonrpc
      {"{\"jsonrpc\":\"1.0\",\"method\":\"echo\",\"id\":1}", rpc_error::kInvalidRequest},  // wrong version
      {"{\"jsonrpc\":\"2.0\",\"method\":5,\"id\":1}", rpc_error::kInvalidRequest},
      {"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":{}}", rpc_error::kInvalidRequest},
      {"{\"jsonrpc\":\"2.0\",\"method\":\"nope\",\"id\":1}", rpc_error::kMethodNotFound},
      {"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":[1],\"id\":1}", rpc_error::kInvalidParams},
      {"{\"jsonrpc\":\"2.0\",\"method\":\"throws\",\"id\":1}", rpc_error::kInternal},
      {"{\"jsonrpc\":\"2.0\",\"method\":\"fail\",\"id\":1}", rpc_error::kNoDevice},
      {"\xff\xfe{{{", rpc_error::kParse},
  };
  for (const Case& k : cases) {
    ASSERT_TRUE(c.send(std::string(k.line) + "\n")) << k.line;
    auto r = c.reply();
    ASSERT_TRUE(r.is_object()) << k.line;
    EXPECT_EQ(r["error"]["code"], k.code) << k.line;
    EXPECT_TRUE(r["error"]["message"].is_string());
  }
  // Still serving on the same connection.
  ASSERT_TRUE(c.send("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2}\n"));
  EXPECT_EQ(c.reply()["id"], 2);
}

TEST_F(CtlServerTest, NotificationsRunWithoutAReply) {
  ASSERT_TRUE(start_server());
  RawClient c(path_);
  ASSERT_TRUE(c.send(
      "{\"jsonrpc\":\"2.0\",\"method\":\"count\"}\n\n  \n{\"jsonrpc\":\"2.0\",\"method\":\"count\",\"id\":1}\n"));
  auto r = c.reply();  // the first reply is the second call's
  EXPECT_EQ(r["id"], 1);
  EXPECT_EQ(r["result"], 2);
}

TEST_F(CtlServerTest, OversizedRequestIsRefusedAndClosed) {
  ControlServer::Options o;
  o.max_request = 1024;
  ASSERT_TRUE(start_server(o));
  {
    RawClient c(path_);
    ASSERT_TRUE(c.send(std::string(4000, 'x')));  // no newline: never a complete line
    auto r = c.reply();
    EXPECT_EQ(r["error"]["code"], rpc_error::kTooLarge);
    EXPECT_TRUE(c.closed());
  }
  {
    RawClient c(path_);
    std::string big =
        R"({"jsonrpc":"2.0","method":"echo","params":{"p":")" + std::string(2000, 'a') + "\"},\"id\":1}\n";
    (void)c.send(big);
    EXPECT_EQ(c.reply()["error"]["code"], rpc_error::kTooLarge);
    EXPECT_TRUE(c.closed());
  }
  // Others are still served.
  RawClient ok_client(path_);
  ASSERT_TRUE(ok_client.send("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":3}\n"));
  EXPECT_EQ(ok_client.reply()["id"], 3);
  EXPECT_TRUE(eventually([&] {
    size_t n = 0;
    reactor_->call([&] { n = server_->connections(); });
    return n == 1;
  }));
}

TEST_F(CtlServerTest, ConnectionCountIsBounded) {
  ControlServer::Options o;
  o.max_connections = 3;
  ASSERT_TRUE(start_server(o));
  std::vector<std::unique_ptr<RawClient>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<RawClient>(path_));
    ASSERT_TRUE(held.back()->send("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1}\n"));
    EXPECT_EQ(held.back()->reply()["id"], 1);  // accepted and served
  }
  RawClient extra(path_);
  auto r = extra.reply();
  EXPECT_EQ(r["error"]["code"], rpc_error::kBusy);
  EXPECT_TRUE(extra.closed());
  held.pop_back();  // one leaves: room for another
  EXPECT_TRUE(eventually([&] {
    RawClient again(path_);
    (void)again.send("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":5}\n");
    const auto r = again.reply();
    return r.is_object() && r.contains("result") && r["id"] == 5;
  }));
}

TEST_F(CtlServerTest, SocketIsRootOnlyAndOtherUidsAreRefused) {
  ASSERT_TRUE(start_server());
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as another uid";
  // A child that drops to nobody: open the socket's mode so it gets to
  // connect at all, and SO_PEERCRED must still refuse it.
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  ASSERT_EQ(::chmod(std::filesystem::path(path_).parent_path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(pipefd[0]);
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(3);
    RawClient c(path_);
    const std::string l = c.connected() ? c.line() : "connect failed";
    (void)!::write(pipefd[1], l.data(), l.size());
    _exit(0);
  }
  ::close(pipefd[1]);
  std::string got;
  char b[1024];
  ssize_t n;
  while ((n = ::read(pipefd[0], b, sizeof(b))) > 0) got.append(b, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto r = nlohmann::json::parse(got, nullptr, false);
  ASSERT_TRUE(r.is_object()) << got;
  EXPECT_EQ(r["error"]["code"], rpc_error::kPermission);
  EXPECT_NE(r["error"]["message"].get<std::string>().find("uid 65534"), std::string::npos) << got;
}

TEST_F(CtlServerTest, StaleSocketIsReplacedLiveOneIsNot) {
  // A dead daemon's socket file: taken over.
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path());
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof(a.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ::close(fd);  // never listened: nobody answers
  }
  ASSERT_TRUE(start_server());
  // A second server on the same path while the first answers: refused.
  Status second = ok();
  reactor_->call([&] {
    ControlServer::Options o;
    o.path = path_;
    auto s = ControlServer::create(*reactor_, o);
    second = s ? ok() : Status(unexpected(s.error()));
  });
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error(), EADDRINUSE);
  // A regular file there is never removed.
  reactor_->call([&] { server_.reset(); });
  EXPECT_FALSE(std::filesystem::exists(path_));  // removed at shutdown
  { std::ofstream(path_) << "not a socket"; }
  EXPECT_FALSE(start_server());
  EXPECT_TRUE(std::filesystem::is_regular_file(path_));
}

TEST_F(CtlServerTest, ClientCallsAndExitCodes) {
  ASSERT_TRUE(start_server());
  auto c = ctl::CtlClient::connect(path_);
  ASSERT_TRUE(c);
  auto r = c->call("echo", {{"k", "v"}});
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->ok());
  EXPECT_EQ(r->result["k"], "v");
  auto e = c->call("fail", nlohmann::json::object());
  ASSERT_TRUE(e);
  EXPECT_EQ(e->error_code, rpc_error::kNoDevice);
  EXPECT_EQ(e->error_message, "no such thing");

  std::ostringstream out, err;
  // Usage errors: 2; an unreachable socket: 3.
  EXPECT_EQ(ctl::run({"frobnicate"}, out, err), ctl::kExitUsage);
  EXPECT_EQ(ctl::run({"--socket", dir_ + "/absent.sock", "list"}, out, err), ctl::kExitUnreachable);
  EXPECT_NE(err.str().find("absent.sock"), std::string::npos);
  // The server has no "list": a JSON-RPC error is exit status 1.
  EXPECT_EQ(ctl::run({"--socket", path_, "list"}, out, err), ctl::kExitRpcError);
  EXPECT_NE(err.str().find("unknown method 'list'"), std::string::npos) << err.str();
}

TEST(CtlResolveSocket, PicksTheOneDaemonOrAsks) {
  test::TempDir tmp;
  const std::string dir = tmp.path;
  std::string why;
  EXPECT_EQ(*ctl::resolve_socket("/x/y.sock", "", dir, why), "/x/y.sock");
  EXPECT_EQ(*ctl::resolve_socket("", "netback", dir, why), dir + "/xenpath-netback.sock");
  EXPECT_FALSE(ctl::resolve_socket("", "", dir, why));
  EXPECT_NE(why.find("no daemon socket"), std::string::npos);
  auto make_sock = [&](const std::string& p) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, p.c_str(), sizeof(a.sun_path) - 1);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ::close(fd);
  };
  make_sock(dir + "/xenpath-blkback.sock");
  EXPECT_EQ(*ctl::resolve_socket("", "", dir, why), dir + "/xenpath-blkback.sock");
  make_sock(dir + "/xenpath-netback.sock");
  EXPECT_FALSE(ctl::resolve_socket("", "", dir, why));
  EXPECT_NE(why.find("--daemon"), std::string::npos);
}

}  // namespace
}  // namespace xenpath
