#include "netback/vif_link.h"

#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "common/xenbus/keys.h"

extern char** environ;

namespace xenpath {

namespace {

// Longer than any address list a vif-route setup writes; bounds what the
// hook's environment carries.
constexpr size_t kMaxIpKey = 1024;
// Linux's IFNAMSIZ - 1.
constexpr size_t kMaxIfname = 15;
// ETH_MIN_MTU and the largest MTU a Linux interface takes.
constexpr uint32_t kMinMtu = 68;
constexpr uint32_t kMaxMtu = 65535;

}  // namespace

bool valid_ifname(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxIfname || name == "." || name == "..") return false;
  for (const char c : name) {
    // dev_valid_name() refuses '/', ':' and isspace(); control bytes too here.
    if (c == '/' || c == ':' || static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  }
  return true;
}

Result<VifLinkKeys> read_vif_link_keys(XenStore& xs, XsTxn t, const std::string& backend_path,
                                       std::string* warn) noexcept {
  try {
    VifLinkKeys k;
    auto note = [&](std::string_view what) {
      if (warn == nullptr) return;
      if (!warn->empty()) warn->append("; ");
      warn->append(what);
    };
    if (auto b = xs.read(t, backend_path + "/bridge")) {
      if (valid_ifname(*b)) k.bridge = std::move(*b);
      else if (!b->empty()) note("malformed bridge key ignored");
    } else if (b.error() != ENOENT) {
      return unexpected(b.error());
    }
    if (auto m = read_decimal<uint32_t>(xs, t, backend_path, "mtu")) {
      if (*m >= kMinMtu && *m <= kMaxMtu) k.mtu = *m;
      else note("mtu key out of range ignored");
    } else if (m.error() == EINVAL) {
      note("malformed mtu key ignored");
    } else if (m.error() != ENOENT) {
      return unexpected(m.error());
    }
    if (auto ip = xs.read(t, backend_path + "/ip")) {
      bool printable = ip->size() <= kMaxIpKey;
      for (const char c : *ip) printable = printable && c >= ' ' && c < 0x7f;
      if (printable) k.ip = std::move(*ip);
      else note("malformed ip key ignored");
    } else if (ip.error() != ENOENT) {
      return unexpected(ip.error());
    }
    return k;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

// ---------------------------------------------------------------------------

Status VifLinkHook::attach(const VifLinkRequest& req) noexcept {
  const Status st = run("add", req);
  if (st) ++stats_.attached;
  else ++stats_.failures;
  return st;
}

void VifLinkHook::detach(const VifLinkRequest& req) noexcept {
  if (!run("remove", req)) ++stats_.failures;
}

Status VifLinkHook::run(const char* action, const VifLinkRequest& req) noexcept {
  ++stats_.requests;
  pid_t pid = -1;
  try {
    std::vector<std::string> env_own = {
        fmt::format("XENPATH_DOMID={}", req.domid),
        fmt::format("XENPATH_DEVID={}", req.devid),
        req.keys.mtu != 0 ? fmt::format("XENPATH_MTU={}", req.keys.mtu) : std::string("XENPATH_MTU="),
        "XENPATH_IP=" + req.keys.ip,
        "XENBUS_PATH=" + req.backend_path,
        "vif=" + req.ifname,
    };
    std::vector<char*> envp;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) envp.push_back(*e);
    for (auto& e : env_own) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string a0 = path_, a1 = action, a2 = req.ifname, a3 = req.keys.bridge;
    char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), nullptr};
    if (const int rc = posix_spawn(&pid, path_.c_str(), nullptr, nullptr, argv, envp.data()); rc != 0) {
      spdlog::error("vif {}/{}: cannot run the vif hook {}: {}", req.domid, req.devid, path_, error_string(rc));
      return unexpected(rc);
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
  // Bounded wait on the control thread: a hook that hangs is killed, not
  // waited for.
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) {
      spdlog::error("vif {}/{}: waiting for the vif hook: {}", req.domid, req.devid, error_string(errno));
      return unexpected(errno);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      spdlog::error("vif {}/{}: vif hook '{} {} {} {}' killed after {} ms", req.domid, req.devid, path_, action,
                    req.ifname, req.keys.bridge, timeout_.count());
      return unexpected(ETIMEDOUT);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    spdlog::info("vif {}/{}: vif hook '{} {} {} {}' done", req.domid, req.devid, path_, action, req.ifname,
                 req.keys.bridge);
    return ok();
  }
  spdlog::error("vif {}/{}: vif hook '{} {} {} {}' failed ({} {})", req.domid, req.devid, path_, action, req.ifname,
                req.keys.bridge, WIFEXITED(status) ? "exit status" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  return unexpected(EIO);
}

}  // namespace xenpath
