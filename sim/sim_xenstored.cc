#include "sim/sim_xenstored.h"

#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "sim/sim_xenstore_client.h"

namespace xenpath::sim {

namespace {

constexpr uint64_t kTagListen = 0;
constexpr uint64_t kTagWake = 1;
constexpr uint64_t kFirstConnTag = 2;

// xenstored itself has no limit on socket clients; a simulator reachable
// through a /tmp path bounds them so a runaway script cannot exhaust fds.
constexpr size_t kMaxSocketConns = 1024;
// A client that sends requests but does not read replies: stop reading its
// requests while this much output is queued (backpressure, as xenstored's
// quota_req_outstanding does for domains)...
constexpr size_t kPauseReadBacklog = 1u << 20;
// ...and drop it once watch events alone pile up beyond this.
constexpr size_t kMaxOutputBacklog = 64u << 20;
// Bytes read from one connection per wakeup, so one busy client cannot
// starve the others (epoll is level-triggered: the rest is read next round).
constexpr size_t kReadBudget = 256u << 10;

constexpr size_t kHeaderSize = sizeof(xsd_sockmsg);

const char* errno_name(int err) noexcept {
  for (const auto& e : xsd_errors)
    if (e.errnum == err) return e.errstring;
  return "EINVAL";  // xenstored answers an untranslatable error the same way
}

// C atoi() semantics without its undefined overflow: xenstored parses domids
// and offsets with atoi(), so garbage reads as 0.
long long xs_atoi(std::string_view s) noexcept {
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r'))) ++i;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  long long v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    if (v < (1LL << 40)) v = v * 10 + (s[i] - '0');
    ++i;
  }
  return neg ? -v : v;
}

std::optional<DomId> parse_domid(std::string_view s) noexcept {
  long long v = xs_atoi(s);
  if (v < 0 || v > 0xFFFF) return std::nullopt;
  return static_cast<DomId>(v);
}

size_t count_strings(std::string_view payload) noexcept {
  size_t n = 0;
  for (char ch : payload) n += ch == '\0';
  return n;
}

// The single nul-terminated argument, or nullopt (xenstored's onearg()).
std::optional<std::string_view> onearg(std::string_view payload) noexcept {
  if (payload.empty() || payload.find('\0') != payload.size() - 1) return std::nullopt;
  return payload.substr(0, payload.size() - 1);
}

// Up to `max` leading nul-terminated strings (xenstored's get_strings()).
std::vector<std::string_view> strings(std::string_view payload, size_t max) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (out.size() < max) {
    size_t nul = payload.find('\0', pos);
    if (nul == std::string_view::npos) break;
    out.push_back(payload.substr(pos, nul - pos));
    pos = nul + 1;
  }
  return out;
}

std::optional<XsPerm> parse_perm(std::string_view s) noexcept {
  if (s.size() < 2) return std::nullopt;
  XsPerm p;
  switch (s[0]) {
    case 'n':
      p.access = XsPerm::kNone;
      break;
    case 'r':
      p.access = XsPerm::kRead;
      break;
    case 'w':
      p.access = XsPerm::kWrite;
      break;
    case 'b':
      p.access = XsPerm::kBoth;
      break;
    default:
      return std::nullopt;
  }
  // strtol(p, &end, 0) as xs_strings_to_perms(): decimal, 0x hex or octal.
  std::string digits(s.substr(1));
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(digits.c_str(), &end, 0);
  if (errno != 0 || end == digits.c_str() || *end != '\0' || v < 0 || v > 0xFFFF) return std::nullopt;
  p.domid = static_cast<DomId>(v);
  return p;
}

std::string perm_string(const XsPerm& p) {
  static constexpr std::array<char, 4> kLetters{'n', 'r', 'w', 'b'};
  return kLetters[p.access & 3] + std::to_string(p.domid);
}

struct Reply {
  uint32_t type;
  std::string body;
};

// A reply that is a list of strings, each NUL-terminated (XS_DIRECTORY,
// XS_GET_PERMS).
template <typename List, typename Str>
Reply list_reply(uint32_t type, const List& items, Str str) {
  Reply out{type, {}};
  for (const auto& item : items) {
    out.body.append(str(item));
    out.body.push_back('\0');
  }
  return out;
}

Reply error_reply(int err) {
  Reply r{XS_ERROR, errno_name(err)};
  r.body.push_back('\0');
  return r;
}

Reply ok_reply(uint32_t type) { return Reply{type, std::string("OK", 3)}; }

Reply status_reply(uint32_t type, const Status& s) { return s ? ok_reply(type) : error_reply(s.error()); }

}  // namespace

class SimXenstored::Impl {
 public:
  struct SocketConn {
    int fd = -1;
    uint64_t tag = 0;
    XsConnId id = 0;
    std::string in;
    size_t in_off = 0;  // consumed prefix of `in`
    std::string out;
    size_t out_off = 0;  // written prefix of `out`
    uint32_t epoll_mask = 0;
    bool dead = false;
  };

  std::shared_ptr<XsSharedStore> shared = std::make_shared<XsSharedStore>();
  std::string path;
  std::string private_dir;
  bool bound = false;
  int listen_fd = -1;
  int epfd = -1;
  int wake_fd = -1;
  std::thread thread;
  std::atomic<bool> stop{false};
  std::atomic<size_t> live_conns{0};

  // Server thread only.
  std::unordered_map<uint64_t, std::unique_ptr<SocketConn>> conns;
  std::unordered_map<XsConnId, SocketConn*> by_id;
  uint64_t next_tag = kFirstConnTag;

  ~Impl() {
    if (thread.joinable()) {
      stop.store(true);
      uint64_t one = 1;
      ssize_t r = ::write(wake_fd, &one, sizeof(one));
      (void)r;
      thread.join();
    }
    {
      std::lock_guard lock(shared->mu);
      for (auto& [tag, c] : conns) shared->store.remove_connection(c->id);
      shared->server_wake_fd = -1;
      shared->socket_pending.clear();
    }
    for (auto& [tag, c] : conns) ::close(c->fd);
    conns.clear();
    by_id.clear();
    if (listen_fd >= 0) ::close(listen_fd);
    if (epfd >= 0) ::close(epfd);
    if (wake_fd >= 0) ::close(wake_fd);
    if (bound) ::unlink(path.c_str());
    if (!private_dir.empty()) ::rmdir(private_dir.c_str());
  }

  Status prepare_path(const std::string& requested) {
    if (requested.empty()) {
      char tmpl[] = "/tmp/xenpath-xs.XXXXXX";
      if (::mkdtemp(tmpl) == nullptr) return unexpected_errno();
      private_dir = tmpl;
      path = private_dir + "/socket";
    } else {
      path = requested;
    }
    if (path.size() >= sizeof(sockaddr_un::sun_path)) return unexpected(ENAMETOOLONG);
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) return unexpected(EEXIST);
      // A socket file: replace it only if nobody is listening on it.
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (probe < 0) return unexpected_errno();
      sockaddr_un addr = make_addr();
      int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
      int err = errno;
      ::close(probe);
      if (rc == 0) return unexpected(EADDRINUSE);
      if (err != ECONNREFUSED && err != ENOENT) return unexpected(err);
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) return unexpected_errno();
    }
    return ok();
  }

  sockaddr_un make_addr() const noexcept {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    return addr;
  }

  Status open_sockets() {
    listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) return unexpected_errno();
    sockaddr_un addr = make_addr();
    if (::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return unexpected_errno();
    bound = true;
    if (::listen(listen_fd, SOMAXCONN) != 0) return unexpected_errno();
    epfd = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) return unexpected_errno();
    wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd < 0) return unexpected_errno();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kTagListen;
    if (::epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev) != 0) return unexpected_errno();
    ev.data.u64 = kTagWake;
    if (::epoll_ctl(epfd, EPOLL_CTL_ADD, wake_fd, &ev) != 0) return unexpected_errno();
    return ok();
  }

  Status start_thread() {
    {
      std::lock_guard lock(shared->mu);
      shared->server_wake_fd = wake_fd;
    }
    try {
      thread = std::thread([this] { run(); });
    } catch (...) {
      return unexpected(EAGAIN);
    }
    pthread_setname_np(thread.native_handle(), "xs-sim");
    return ok();
  }

  void run() noexcept {
    {
      std::lock_guard lock(shared->mu);
      shared->server_thread = std::this_thread::get_id();
    }
    std::array<epoll_event, 64> evs{};
    while (!stop.load(std::memory_order_relaxed)) {
      int n = ::epoll_wait(epfd, evs.data(), static_cast<int>(evs.size()), -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        spdlog::error("sim xenstored: epoll_wait: {}", std::strerror(errno));
        return;
      }
      for (int i = 0; i < n; ++i) {
        const uint64_t tag = evs[i].data.u64;
        if (tag == kTagWake) {
          uint64_t v;
          ssize_t r = ::read(wake_fd, &v, sizeof(v));
          (void)r;
        } else if (tag == kTagListen) {
          accept_all();
        } else {
          auto it = conns.find(tag);
          if (it == conns.end()) continue;  // closed earlier in this batch
          SocketConn& c = *it->second;
          if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) handle_input(c);
          if (!c.dead && (evs[i].events & EPOLLOUT)) flush(c);
          if (c.dead) close_conn(tag);
        }
      }
      deliver_pending_events();
    }
  }

  void accept_all() noexcept {
    for (;;) {
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        return;  // EAGAIN, or a transient error (EMFILE...): retried on the next wakeup
      }
      if (conns.size() >= kMaxSocketConns) {
        spdlog::warn("sim xenstored: refusing connection: {} clients already", conns.size());
        ::close(fd);
        continue;
      }
      auto c = std::make_unique<SocketConn>();
      c->fd = fd;
      c->tag = next_tag++;
      {
        std::lock_guard lock(shared->mu);
        c->id = shared->store.add_connection(kDom0, XsConnKind::kSocket);
      }
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = c->tag;
      if (::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        std::lock_guard lock(shared->mu);
        shared->store.remove_connection(c->id);
        ::close(fd);
        continue;
      }
      c->epoll_mask = EPOLLIN;
      by_id[c->id] = c.get();
      conns.emplace(c->tag, std::move(c));
      live_conns.store(conns.size(), std::memory_order_relaxed);
    }
  }

  void close_conn(uint64_t tag) noexcept {
    auto it = conns.find(tag);
    if (it == conns.end()) return;
    SocketConn& c = *it->second;
    {
      // Its watches and transactions die with it.
      std::lock_guard lock(shared->mu);
      shared->store.remove_connection(c.id);
    }
    ::epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    by_id.erase(c.id);
    conns.erase(it);
    live_conns.store(conns.size(), std::memory_order_relaxed);
  }

  size_t backlog(const SocketConn& c) const noexcept { return c.out.size() - c.out_off; }

  void update_epoll(SocketConn& c) noexcept {
    uint32_t want = 0;
    if (backlog(c) < kPauseReadBacklog) want |= EPOLLIN;
    if (backlog(c) > 0) want |= EPOLLOUT;
    if (want == c.epoll_mask) return;
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = c.tag;
    if (::epoll_ctl(epfd, EPOLL_CTL_MOD, c.fd, &ev) != 0) {
      c.dead = true;
      return;
    }
    c.epoll_mask = want;
  }

  void handle_input(SocketConn& c) noexcept {
    char buf[16384];
    size_t budget = kReadBudget;
    while (budget > 0 && backlog(c) < kPauseReadBacklog) {
      ssize_t r = ::recv(c.fd, buf, sizeof(buf), 0);
      if (r == 0) {
        c.dead = true;  // the client went away, possibly mid-message
        return;
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
        break;
      }
      budget -= std::min(budget, static_cast<size_t>(r));
      c.in.append(buf, static_cast<size_t>(r));
      process_messages(c);
      if (c.dead) return;
    }
    flush(c);
  }

  void process_messages(SocketConn& c) noexcept {
    while (c.in.size() - c.in_off >= kHeaderSize) {
      xsd_sockmsg hdr;
      std::memcpy(&hdr, c.in.data() + c.in_off, kHeaderSize);
      if (hdr.len > XENSTORE_PAYLOAD_MAX) {
        // xenstored drops a client that tries to feed it an oversize message:
        // the stream cannot be resynchronised.
        spdlog::info("sim xenstored: dropping socket client: message of {} bytes", hdr.len);
        c.dead = true;
        return;
      }
      if (c.in.size() - c.in_off < kHeaderSize + hdr.len) break;
      std::string_view payload(c.in.data() + c.in_off + kHeaderSize, hdr.len);
      handle_message(c, hdr, payload);
      c.in_off += kHeaderSize + hdr.len;
    }
    if (c.in_off == c.in.size()) {
      c.in.clear();
      c.in_off = 0;
    } else if (c.in_off > 0) {
      c.in.erase(0, c.in_off);
      c.in_off = 0;
    }
  }

  static void append_message(std::string& out, uint32_t type, uint32_t req_id, uint32_t tx_id, std::string_view body) {
    xsd_sockmsg hdr{};
    hdr.type = type;
    hdr.req_id = req_id;
    hdr.tx_id = tx_id;
    hdr.len = static_cast<uint32_t>(body.size());
    out.append(reinterpret_cast<const char*>(&hdr), kHeaderSize);
    out.append(body);
  }

  void append_events(SocketConn& c, std::vector<XsWatchEvent>& events) {
    for (const auto& ev : events) {
      std::string body = ev.path;
      body.push_back('\0');
      body.append(ev.token);
      body.push_back('\0');
      append_message(c.out, XS_WATCH_EVENT, 0, 0, body);
    }
    events.clear();
  }

  void handle_message(SocketConn& c, const xsd_sockmsg& hdr, std::string_view payload) noexcept {
    std::vector<XsWatchEvent> events;
    Reply reply{XS_ERROR, {}};
    {
      std::lock_guard lock(shared->mu);
      reply = dispatch(c.id, hdr, payload);
      // Events this request raised for its own connection (the initial
      // event of XS_WATCH) follow the reply, as xenstored sends them.
      shared->store.pop_events(c.id, events, SIZE_MAX);
    }
    if (reply.body.size() > XENSTORE_PAYLOAD_MAX) reply = error_reply(E2BIG);
    append_message(c.out, reply.type, hdr.req_id, hdr.tx_id, reply.body);
    append_events(c, events);
  }

  // Runs under shared->mu.
  Reply dispatch(XsConnId id, const xsd_sockmsg& hdr, std::string_view payload) {
    XsStore& st = shared->store;
    const uint32_t type = hdr.type;
    auto fail = [&](int err) {
      st.count_op(id, type);
      return error_reply(err);
    };
    if (type >= XS_TYPE_COUNT || type == XS_WATCH_EVENT || type == XS_ERROR) return fail(ENOSYS);
    // Requests other than (un)watch run in the transaction named by tx_id.
    const XsTxn tx = hdr.tx_id;
    if (type != XS_WATCH && type != XS_UNWATCH && tx != kXsNoTxn && !st.has_transaction(id, tx)) return fail(ENOENT);

    switch (type) {
      case XS_READ: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        auto r = st.read(id, tx, *a);
        if (!r) return error_reply(r.error());
        return Reply{type, std::move(*r)};
      }
      case XS_WRITE: {
        auto v = strings(payload, 1);
        if (v.empty()) return fail(EINVAL);
        return status_reply(type, st.write(id, tx, v[0], payload.substr(v[0].size() + 1)));
      }
      case XS_MKDIR: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        return status_reply(type, st.mkdir(id, tx, *a));
      }
      case XS_RM: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        return status_reply(type, st.rm(id, tx, *a));
      }
      case XS_DIRECTORY: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        auto r = st.directory(id, tx, *a);
        if (!r) return error_reply(r.error());
        Reply out = list_reply(type, *r, [](const std::string& name) { return name; });
        // Too long for one message: libxenstore then asks for it in parts.
        if (out.body.size() > XENSTORE_PAYLOAD_MAX) return error_reply(E2BIG);
        return out;
      }
      case XS_DIRECTORY_PART: {
        if (count_strings(payload) != 2) return fail(EINVAL);
        auto v = strings(payload, 2);
        long long off = xs_atoi(v[1]);
        // atoi() into an unsigned int, as xenstored: negative is "past the end".
        uint32_t offset = off < 0 || off > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(off);
        auto r = st.directory_part(id, tx, v[0], offset);
        if (!r) return error_reply(r.error());
        return Reply{type, std::move(*r)};
      }
      case XS_GET_PERMS: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        auto r = st.get_perms(id, tx, *a);
        if (!r) return error_reply(r.error());
        return list_reply(type, *r, perm_string);
      }
      case XS_SET_PERMS: {
        size_t n = count_strings(payload);
        if (n < 2) return fail(EINVAL);
        auto v = strings(payload, n);
        std::vector<XsPerm> perms;
        for (size_t i = 1; i < v.size(); ++i) {
          auto p = parse_perm(v[i]);
          if (!p) return fail(EINVAL);
          perms.push_back(*p);
        }
        return status_reply(type, st.set_perms(id, tx, v[0], perms));
      }
      case XS_WATCH:
      case XS_UNWATCH: {
        auto v = strings(payload, 2);
        if (v.size() != 2) return fail(EINVAL);
        return status_reply(type, type == XS_WATCH ? st.watch(id, v[0], v[1]) : st.unwatch(id, v[0], v[1]));
      }
      case XS_TRANSACTION_START: {
        if (tx != kXsNoTxn) return fail(EBUSY);  // no nested transactions
        auto r = st.transaction_start(id);
        if (!r) return error_reply(r.error());
        std::string body = std::to_string(*r);
        body.push_back('\0');
        return Reply{type, std::move(body)};
      }
      case XS_TRANSACTION_END: {
        auto a = onearg(payload);
        if (!a || (*a != "T" && *a != "F")) return fail(EINVAL);
        if (tx == kXsNoTxn) return fail(ENOENT);
        return status_reply(type, st.transaction_end(id, tx, *a == "T"));
      }
      case XS_GET_DOMAIN_PATH: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        st.count_op(id, type);
        // "%u" of atoi(), exactly as xenstored answers any number.
        std::string body = "/local/domain/" + std::to_string(static_cast<unsigned>(xs_atoi(*a)));
        body.push_back('\0');
        return Reply{type, std::move(body)};
      }
      case XS_INTRODUCE: {
        auto v = strings(payload, 3);
        if (v.size() < 3) return fail(EINVAL);
        auto domid = parse_domid(v[0]);
        if (!domid || xs_atoi(v[2]) <= 0) return fail(EINVAL);  // the ring's event channel
        return status_reply(type, st.introduce(id, *domid));
      }
      case XS_RELEASE:
      case XS_RESUME: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        auto domid = parse_domid(*a);
        if (!domid) return fail(ENOENT);
        return status_reply(type, type == XS_RELEASE ? st.release(id, *domid) : st.resume(id, *domid));
      }
      case XS_IS_DOMAIN_INTRODUCED: {
        auto a = onearg(payload);
        if (!a) return fail(EINVAL);
        auto domid = parse_domid(*a);
        if (!domid) {
          st.count_op(id, type);
          return Reply{type, std::string("F", 2)};
        }
        auto r = st.is_introduced(id, *domid);
        if (!r) return error_reply(r.error());
        return Reply{type, std::string(*r ? "T" : "F", 2)};
      }
      case XS_SET_TARGET: {
        auto v = strings(payload, 2);
        if (v.size() < 2) return fail(EINVAL);
        auto domid = parse_domid(v[0]);
        auto target = parse_domid(v[1]);
        if (!domid || !target) return fail(ENOENT);
        return status_reply(type, st.set_target(id, *domid, *target));
      }
      case XS_RESET_WATCHES:
        st.reset_watches(id);
        return ok_reply(type);
      case XS_CONTROL:
        st.count_op(id, type);
        return control(payload);
      default:
        return fail(ENOSYS);
    }
  }

  // XS_CONTROL, the commands of xenstore-control that make sense here.
  Reply control(std::string_view payload) {
    auto v = strings(payload, 64);
    if (v.empty()) return error_reply(EINVAL);
    const std::string_view cmd = v[0];
    const size_t args = v.size() - 1;
    if (cmd == "print") {
      if (args != 1) return error_reply(EINVAL);
      spdlog::info("sim xenstored: control: {}", v[1]);
      return ok_reply(XS_CONTROL);
    }
    if (cmd == "check") {
      if (args != 0) return error_reply(EINVAL);
      std::string problem = shared->store.check();
      if (!problem.empty()) {
        spdlog::error("sim xenstored: store check failed: {}", problem);
        return error_reply(EIO);
      }
      return ok_reply(XS_CONTROL);
    }
    if (cmd == "help") {
      if (args != 0) return error_reply(EINVAL);
      std::string body = "Available commands:\ncheck\nprint <string>\nhelp\n";
      body.push_back('\0');
      return Reply{XS_CONTROL, std::move(body)};
    }
    return error_reply(EINVAL);
  }

  // Watch events raised by other connections (or in-process clients) for
  // socket clients.
  void deliver_pending_events() noexcept {
    std::vector<XsConnId> pending;
    std::vector<std::pair<SocketConn*, std::vector<XsWatchEvent>>> batches;
    {
      std::lock_guard lock(shared->mu);
      pending.swap(shared->socket_pending);
      for (XsConnId id : pending) {
        auto it = by_id.find(id);
        if (it == by_id.end()) continue;
        std::vector<XsWatchEvent> events;
        if (shared->store.pop_events(id, events, SIZE_MAX) > 0) batches.emplace_back(it->second, std::move(events));
      }
    }
    std::vector<uint64_t> dead;
    for (auto& [c, events] : batches) {
      append_events(*c, events);
      if (backlog(*c) > kMaxOutputBacklog) {
        spdlog::warn("sim xenstored: dropping socket client that does not read its watch events");
        c->dead = true;
      } else {
        flush(*c);
      }
      if (c->dead) dead.push_back(c->tag);
    }
    for (uint64_t tag : dead) close_conn(tag);
  }

  void flush(SocketConn& c) noexcept {
    while (backlog(c) > 0) {
      ssize_t w = ::send(c.fd, c.out.data() + c.out_off, backlog(c), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
        break;
      }
      c.out_off += static_cast<size_t>(w);
    }
    if (c.out_off == c.out.size()) {
      c.out.clear();
      c.out_off = 0;
    } else if (c.out_off > (1u << 16) && c.out_off * 2 > c.out.size()) {
      c.out.erase(0, c.out_off);
      c.out_off = 0;
    }
    if (!c.dead) update_epoll(c);
  }
};

SimXenstored::SimXenstored(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}

SimXenstored::~SimXenstored() = default;

Result<std::unique_ptr<SimXenstored>> SimXenstored::start(const std::string& socket_path) noexcept {
  auto impl = std::make_unique<Impl>();
  XP_TRY(impl->prepare_path(socket_path));
  XP_TRY(impl->open_sockets());
  XP_TRY(impl->start_thread());
  return std::unique_ptr<SimXenstored>(new SimXenstored(std::move(impl)));
}

const std::string& SimXenstored::socket_path() const noexcept { return impl_->path; }

Result<std::unique_ptr<XenStore>> SimXenstored::connect(DomId self) noexcept {
  XP_ASSIGN_OR_RETURN(auto client, SimXenStoreClient::create(impl_->shared, self));
  return std::unique_ptr<XenStore>(std::move(client));
}

void SimXenstored::introduce_domain(DomId domid) noexcept {
  std::lock_guard lock(impl_->shared->mu);
  impl_->shared->store.introduce_domain(domid);
}

void SimXenstored::release_domain(DomId domid) noexcept {
  std::lock_guard lock(impl_->shared->mu);
  impl_->shared->store.release_domain(domid);
}

XsOpStats SimXenstored::socket_stats() const noexcept {
  std::lock_guard lock(impl_->shared->mu);
  return impl_->shared->store.socket_stats();
}

XsOpStats SimXenstored::domain_stats(DomId domid) const noexcept {
  std::lock_guard lock(impl_->shared->mu);
  return impl_->shared->store.domain_stats(domid);
}

void SimXenstored::reset_stats() noexcept {
  std::lock_guard lock(impl_->shared->mu);
  impl_->shared->store.reset_stats();
}

size_t SimXenstored::watch_count() const noexcept {
  std::lock_guard lock(impl_->shared->mu);
  return impl_->shared->store.watch_count();
}

size_t SimXenstored::node_count() const noexcept {
  std::lock_guard lock(impl_->shared->mu);
  return impl_->shared->store.node_count();
}

size_t SimXenstored::open_transactions() const noexcept {
  std::lock_guard lock(impl_->shared->mu);
  return impl_->shared->store.open_transactions();
}

size_t SimXenstored::socket_connections() const noexcept { return impl_->live_conns.load(std::memory_order_relaxed); }

}  // namespace xenpath::sim
