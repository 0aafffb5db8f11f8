// ControlServer: a daemon's control socket — a unix stream socket speaking
// newline-delimited JSON-RPC 2.0 (SPDK's convention: one request object per
// line, one response object per line), for xenpath-ctl and scripts.
//
// Who may talk to it: the socket is created mode 0600, and every peer's
// credentials (SO_PEERCRED) are checked at accept: a uid that is neither
// root nor the daemon's own gets one error line saying so and is closed.
//
// Hostile or broken clients cannot hurt the daemon: at most
// Options::max_connections at once (one more gets an error line and is
// closed), a request line longer than Options::max_request gets an error and
// the connection is closed, a client that does not read its replies is
// closed once Options::max_output bytes are waiting, and a line that is not
// a valid request gets a JSON-RPC error (-32700 parse error, -32600 invalid
// request, -32601 unknown method, -32602 bad params), never an exception.
// A burst of requests on one connection is handled at most kLinesPerWakeup
// at a time, so one client cannot monopolise the control reactor.
//
// Methods are registered by name. A method gets the request's params (an
// object; {} when absent) and a Responder; it may answer at once or later
// (after posting work to a worker reactor and getting the result posted
// back), but always on the control reactor's thread. A Responder whose
// connection has gone meanwhile drops the answer.
//
// Threads: created, used and destroyed on the control reactor's thread
// (Reactor::call from elsewhere). Touches no guest memory.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/reactor.h"
#include "common/result.h"

namespace xenpath {

// JSON-RPC 2.0 error codes: the spec's, then ours (-32000..-32099 are the
// implementation-defined server errors).
namespace rpc_error {
inline constexpr int kParse = -32700;
inline constexpr int kInvalidRequest = -32600;
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kInvalidParams = -32602;
inline constexpr int kInternal = -32603;
inline constexpr int kNoDevice = -32000;      // no such device
inline constexpr int kPermission = -32001;    // peer uid refused
inline constexpr int kBusy = -32002;          // too many connections
inline constexpr int kTooLarge = -32003;      // request line over the limit
inline constexpr int kNotSupported = -32004;  // unknown setting for that target
inline constexpr int kFailed = -32005;        // the operation failed (message says why)
}  // namespace rpc_error

class ControlServer {
 public:
  struct Options {
    std::string path;                          // the socket's path; its directory is created (0755)
    size_t max_request = 64 * 1024;            // bytes in one request line
    size_t max_connections = 16;               // clients at once
    size_t max_output = 16 << 20;              // bytes queued to one client
    uid_t owner_uid = static_cast<uid_t>(-1);  // -1: geteuid(); besides root, the one uid served
  };
  static constexpr unsigned kLinesPerWakeup = 16;

  class Responder {
   public:
    Responder() = default;
    void result(nlohmann::json value) const;
    void error(int code, const std::string& message) const;
    // Notifications (no id) expect no answer; the method runs anyway.
    [[nodiscard]] bool wants_reply() const noexcept { return has_id_; }

   private:
    friend class ControlServer;
    struct Conn;
    std::weak_ptr<Conn> conn_;
    nlohmann::json id_;
    bool has_id_ = false;
  };
  using Method = std::function<void(const nlohmann::json& params, const Responder& reply)>;

  // On `reactor`'s thread: binds (a stale socket left by a dead daemon is
  // replaced; EADDRINUSE when a live one answers there), listens, watches.
  static Result<std::unique_ptr<ControlServer>> create(Reactor& reactor, const Options& opts) noexcept;
  // On the reactor's thread: closes every connection, removes the socket.
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  void add_method(const std::string& name, Method fn);
  [[nodiscard]] const std::string& path() const noexcept { return opts_.path; }
  [[nodiscard]] size_t connections() const noexcept { return conns_.size(); }

 private:
  using Conn = Responder::Conn;
  ControlServer(Reactor& reactor, const Options& opts) noexcept : reactor_(reactor), opts_(opts) {}
  void on_accept() noexcept;
  void on_conn_event(const std::shared_ptr<Conn>& c, uint32_t events) noexcept;
  void handle_line(const std::shared_ptr<Conn>& c, const std::string& line) noexcept;
  void close_conn(const std::shared_ptr<Conn>& c) noexcept;
  static void send(const std::shared_ptr<Conn>& c, const nlohmann::json& msg) noexcept;
  static void flush(const std::shared_ptr<Conn>& c) noexcept;
  static nlohmann::json error_object(const nlohmann::json& id, int code, const std::string& message);
  // Refuses a peer before it is served: one error line, best effort, then close.
  static void refuse(int fd, int code, const std::string& message) noexcept;

  Reactor& reactor_;
  Options opts_;
  int listen_fd_ = -1;
  std::map<int, std::shared_ptr<Conn>> conns_;
  std::map<std::string, Method, std::less<>> methods_;
};

}  // namespace xenpath
