#include "common/ctl_server.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace xenpath {

struct ControlServer::Responder::Conn {
  ControlServer* server = nullptr;
  int fd = -1;  // -1 once closed
  uid_t uid = 0;
  std::string in;
  std::string out;
  bool want_out = false;  // watching EPOLLOUT too
  bool closing = false;   // close once `out` is written (after a fatal error line)
};

namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path)) return unexpected(ENAMETOOLONG);
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

// True when a live process accepts on `path` (then it is not ours to take).
bool someone_listens(const sockaddr_un& a) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool live = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return live;
}

}  // namespace

void ControlServer::Responder::result(nlohmann::json value) const {
  auto c = conn_.lock();
  if (!c || c->fd < 0 || !has_id_) return;
  send(c, {{"jsonrpc", "2.0"}, {"result", std::move(value)}, {"id", id_}});
}

void ControlServer::Responder::error(int code, const std::string& message) const {
  auto c = conn_.lock();
  if (!c || c->fd < 0 || !has_id_) return;
  send(c, error_object(id_, code, message));
}

Result<std::unique_ptr<ControlServer>> ControlServer::create(Reactor& reactor, const Options& opts) noexcept {
  try {
    std::unique_ptr<ControlServer> s(new ControlServer(reactor, opts));
    if (s->opts_.owner_uid == static_cast<uid_t>(-1)) s->opts_.owner_uid = ::geteuid();
    XP_ASSIGN_OR_RETURN(const sockaddr_un addr, unix_address(opts.path));
    const std::filesystem::path dir = std::filesystem::path(opts.path).parent_path();
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec) return unexpected(ec.value());
    }
    struct stat st {};
    if (::lstat(opts.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) return unexpected(EEXIST);  // never remove what is not a socket
      if (someone_listens(addr)) return unexpected(EADDRINUSE);
      ::unlink(opts.path.c_str());  // a dead daemon's
    }
    s->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->listen_fd_ < 0) return unexpected(errno);
    // 0600 from the first moment: no window where another user could connect.
    const mode_t old = ::umask(0177);
    const int b = ::bind(s->listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    const int bind_errno = errno;
    ::umask(old);
    if (b != 0) return unexpected(bind_errno);
    if (::chmod(opts.path.c_str(), 0600) != 0 || ::listen(s->listen_fd_, 16) != 0) {
      const int e = errno;
      ::unlink(opts.path.c_str());
      return unexpected(e);
    }
    ControlServer* self = s.get();
    if (auto w = reactor.watch_fd(s->listen_fd_, EPOLLIN, [self](uint32_t) { self->on_accept(); }); !w) {
      ::unlink(opts.path.c_str());
      return unexpected(w.error());
    }
    return s;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

ControlServer::~ControlServer() {
  while (!conns_.empty()) close_conn(conns_.begin()->second);
  if (listen_fd_ >= 0) {
    reactor_.unwatch_fd(listen_fd_);
    ::close(listen_fd_);
    ::unlink(opts_.path.c_str());
  }
}

void ControlServer::add_method(const std::string& name, Method fn) { methods_[name] = std::move(fn); }

void ControlServer::refuse(int fd, int code, const std::string& message) noexcept {
  try {
    const std::string line = error_object(nullptr, code, message).dump() + "\n";
    (void)!::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } catch (...) {
  }
  ::close(fd);
}

void ControlServer::on_accept() noexcept {
  // Bounded: a flood of connects is served over several wake-ups.
  for (int i = 0; i < 16; ++i) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR) spdlog::warn("control socket accept: {}", error_string(errno));
      return;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      ::close(fd);
      continue;
    }
    if (cred.uid != 0 && cred.uid != opts_.owner_uid) {
      spdlog::warn("control socket: refused pid {} uid {}", cred.pid, cred.uid);
      refuse(fd, rpc_error::kPermission,
             fmt::format("permission denied: uid {} may not control this daemon (root or uid {} only)", cred.uid,
                         opts_.owner_uid));
      continue;
    }
    if (conns_.size() >= opts_.max_connections) {
      refuse(fd, rpc_error::kBusy, fmt::format("too many control connections (at most {})", opts_.max_connections));
      continue;
    }
    try {
      auto c = std::make_shared<Conn>();
      c->server = this;
      c->fd = fd;
      c->uid = cred.uid;
      std::weak_ptr<Conn> weak = c;
      if (!reactor_.watch_fd(fd, EPOLLIN, [this, weak](uint32_t ev) {
            if (auto cc = weak.lock()) on_conn_event(cc, ev);
          })) {
        ::close(fd);
        continue;
      }
      conns_.emplace(fd, std::move(c));
    } catch (...) {
      ::close(fd);
    }
  }
}

void ControlServer::on_conn_event(const std::shared_ptr<Conn>& c, uint32_t events) noexcept {
  if (events & EPOLLOUT) flush(c);
  if (c->fd < 0) return;
  // Backpressure: no more bytes while a request's worth waits unhandled.
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->in.size() <= opts_.max_request) {
    char buf[4096];
    const ssize_t n = ::recv(c->fd, buf, sizeof(buf), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
      close_conn(c);
      return;
    }
    if (n > 0) {
      try {
        if (!c->closing) c->in.append(buf, static_cast<size_t>(n));
      } catch (...) {
        close_conn(c);
        return;
      }
    }
  }
  unsigned lines = 0;
  size_t nl;
  while (c->fd >= 0 && !c->closing && lines < kLinesPerWakeup && (nl = c->in.find('\n')) != std::string::npos) {
    std::string line = c->in.substr(0, nl);
    c->in.erase(0, nl + 1);
    ++lines;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (line.size() > opts_.max_request) {
      c->closing = true;
      send(c, error_object(nullptr, rpc_error::kTooLarge,
                           fmt::format("request of {} bytes, at most {}", line.size(), opts_.max_request)));
      return;
    }
    handle_line(c, line);
  }
  if (c->fd < 0 || c->closing) return;
  if (c->in.find('\n') == std::string::npos && c->in.size() > opts_.max_request) {
    c->closing = true;
    send(c, error_object(nullptr, rpc_error::kTooLarge, fmt::format("request over {} bytes", opts_.max_request)));
    return;
  }
  // Lines left over for the next wake-up: level-triggered epoll only comes
  // back for new bytes, so come back through the mailbox.
  if (c->in.find('\n') != std::string::npos) {
    std::weak_ptr<Conn> weak = c;
    reactor_.post([this, weak] {
      if (auto cc = weak.lock(); cc && cc->fd >= 0) on_conn_event(cc, 0);
    });
  }
}

nlohmann::json ControlServer::error_object(const nlohmann::json& id, int code, const std::string& message) {
  return {{"jsonrpc", "2.0"}, {"error", {{"code", code}, {"message", message}}}, {"id", id}};
}

void ControlServer::handle_line(const std::shared_ptr<Conn>& c, const std::string& line) noexcept {
  try {
    nlohmann::json req = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (req.is_discarded()) {
      send(c, error_object(nullptr, rpc_error::kParse, "parse error: not a JSON document"));
      return;
    }
    nlohmann::json id = nullptr;
    const bool obj = req.is_object();
    const bool has_id = obj && req.contains("id");
    if (has_id) id = req["id"];
    if (!obj || req.value("jsonrpc", std::string()) != "2.0" || !req.contains("method") || !req["method"].is_string() ||
        (has_id && !id.is_string() && !id.is_number() && !id.is_null())) {
      send(c, error_object(has_id && (id.is_string() || id.is_number()) ? id : nlohmann::json(nullptr),
                           rpc_error::kInvalidRequest, "invalid request: want {\"jsonrpc\":\"2.0\",\"method\":...}"));
      return;
    }
    nlohmann::json params = nlohmann::json::object();
    if (req.contains("params")) {
      params = req["params"];
      if (!params.is_object()) {
        if (has_id) send(c, error_object(id, rpc_error::kInvalidParams, "params must be an object"));
        return;
      }
    }
    Responder r;
    r.conn_ = c;
    r.id_ = id;
    r.has_id_ = has_id;
    const std::string method = req["method"].get<std::string>();
    auto it = methods_.find(method);
    if (it == methods_.end()) {
      r.error(rpc_error::kMethodNotFound, fmt::format("unknown method '{}'", method));
      return;
    }
    it->second(params, r);
  } catch (const std::exception& e) {
    // A method that threw (a JSON type error on odd params): an error
    // reply, never a dead control plane.
    send(c, error_object(nullptr, rpc_error::kInternal, fmt::format("internal error: {}", e.what())));
  } catch (...) {
    send(c, error_object(nullptr, rpc_error::kInternal, "internal error"));
  }
}

void ControlServer::send(const std::shared_ptr<Conn>& c, const nlohmann::json& msg) noexcept {
  if (c->fd < 0) return;
  try {
    std::string line = msg.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    line.push_back('\n');
    if (c->out.size() + line.size() > c->server->opts_.max_output) {
      spdlog::warn("control socket: a client (uid {}) does not read its replies; closed", c->uid);
      c->server->close_conn(c);
      return;
    }
    c->out += line;
  } catch (...) {
    c->server->close_conn(c);
    return;
  }
  flush(c);
}

void ControlServer::flush(const std::shared_ptr<Conn>& c) noexcept {
  ControlServer* s = c->server;
  while (c->fd >= 0 && !c->out.empty()) {
    const ssize_t n = ::send(c->fd, c->out.data(), c->out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    s->close_conn(c);
    return;
  }
  if (c->fd < 0) return;
  if (c->out.empty() && c->closing) {
    s->close_conn(c);
    return;
  }
  const bool want = !c->out.empty();
  if (want == c->want_out) return;
  // Level-triggered: ask for EPOLLOUT only while bytes wait.
  s->reactor_.unwatch_fd(c->fd);
  std::weak_ptr<Conn> weak = c;
  if (!s->reactor_.watch_fd(c->fd, want ? EPOLLIN | EPOLLOUT : EPOLLIN, [s, weak](uint32_t ev) {
        if (auto cc = weak.lock()) s->on_conn_event(cc, ev);
      })) {
    s->close_conn(c);
    return;
  }
  c->want_out = want;
}

void ControlServer::close_conn(const std::shared_ptr<Conn>& c) noexcept {
  if (c->fd < 0) return;
  const int fd = c->fd;
  reactor_.unwatch_fd(fd);
  ::close(fd);
  c->fd = -1;
  conns_.erase(fd);  // may drop the last reference: `c` is the caller's
}

}  // namespace xenpath
