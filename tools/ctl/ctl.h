// xenpath-ctl's logic (tools/xenpath_ctl_main.cc is only its main): a
// client of a daemon's control socket (common/ctl_server.h, newline-delimited
// JSON-RPC 2.0) and the command line over it — list, show DEV, stats
// [--watch], set [DEV] key=value, cache stats|drop [IMAGE], version — printing tables for people or,
// with --json, the daemon's answers as they are for scripts. docs/ops.md.
//
// Threads: whoever calls; one CtlClient per thread. No guest memory.
#pragma once

#include <chrono>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace xenpath::ctl {

// Exit status of xenpath-ctl (docs/ops.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitRpcError = 1,     // the daemon refused the request (no such device, bad setting, ...)
  kExitUsage = 2,        // bad command line
  kExitUnreachable = 3,  // no socket, connection refused, permission denied by the daemon
  kExitProtocol = 4,     // the daemon's answer was not a JSON-RPC reply (or timed out)
};

struct RpcReply {
  nlohmann::json result;
  int error_code = 0;  // 0: success
  std::string error_message;
  [[nodiscard]] bool ok() const noexcept { return error_code == 0; }
};

class CtlClient {
 public:
  // Connects to the unix socket at `path` (errno on failure).
  static Result<CtlClient> connect(const std::string& path) noexcept;
  CtlClient(CtlClient&& o) noexcept : fd_(std::exchange(o.fd_, -1)), buf_(std::move(o.buf_)), next_id_(o.next_id_) {}
  CtlClient& operator=(CtlClient&&) = delete;
  CtlClient(const CtlClient&) = delete;
  ~CtlClient();

  // One request and its reply. Transport failures are errno codes:
  // ETIMEDOUT (no reply within `timeout`), ECONNRESET (closed), EPROTO (a
  // reply that is not JSON-RPC). A refusal at accept (permission, too many
  // clients) arrives as an RpcReply error.
  Result<RpcReply> call(const std::string& method, const nlohmann::json& params,
                        std::chrono::milliseconds timeout = std::chrono::seconds(5)) noexcept;

 private:
  explicit CtlClient(int fd) noexcept : fd_(fd) {}
  int fd_ = -1;
  std::string buf_;
  int64_t next_id_ = 1;
};

// Which socket: --socket PATH, else --daemon NAME (xenpath-NAME under
// /run/xenpath), else the one daemon socket found there. EINVAL with
// `why` set when it cannot tell.
Result<std::string> resolve_socket(const std::string& socket, const std::string& daemon, const std::string& dir,
                                   std::string& why);

// The whole program: parses argv, talks to the daemon, prints to `out`
// (results) and `err` (diagnostics), returns the exit status.
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// Renderers (exposed for tests): the human tables.
void print_list(const nlohmann::json& list, std::ostream& out);
// `cache stats`: the cache's occupancy, then hits/misses/joins/bypasses/
// fills and MiB from memory and disk: all, per base image, per VBD.
void print_cache(const nlohmann::json& cache, std::ostream& out);
void print_show(const nlohmann::json& dev, std::ostream& out);
// Cumulative counters of a stats document.
void print_stats(const nlohmann::json& stats, std::ostream& out);
// Rates between two stats documents taken `seconds` apart.
void print_rates(const nlohmann::json& before, const nlohmann::json& after, double seconds, std::ostream& out);

}  // namespace xenpath::ctl
