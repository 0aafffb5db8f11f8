#include "common/libxen/libxen_store.h"

// xenstore.h declares C functions without extern "C" guards.
extern "C" {
#include <xenstore.h>
}

#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <optional>

namespace xenpath {

namespace {

// libxenstore takes C strings: a path or token with an embedded nul would
// silently name something else, so refuse it.
bool has_nul(std::string_view s) noexcept { return s.find('\0') != std::string_view::npos; }

// free() for what libxenstore hands back.
struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};
template <typename T>
using Malloced = std::unique_ptr<T, FreeDeleter>;

// XENSTORED_PATH is process-wide state; opening handles on different sockets
// from several threads must not interleave setenv/xs_open/restore.
std::mutex& env_mutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

Result<std::unique_ptr<XenStore>> LibxenStore::open(const std::string& socket_path) noexcept {
  if (has_nul(socket_path)) return unexpected(EINVAL);
  xs_handle* h = nullptr;
  int err = 0;
  if (socket_path.empty()) {
    h = xs_open(0);
    err = errno;
  } else {
    // libxenstore 4.17's xs_open() tries xs_daemon_socket() and then
    // xs_domain_dev(); both return $XENSTORED_PATH when it is set, and it
    // connects as a socket when the path is one. (XS_OPEN_SOCKETONLY is
    // ignored since 4.x, so the flags do not matter.) The variable is
    // restored afterwards so child processes and later opens see the
    // caller's environment.
    std::lock_guard lock(env_mutex());
    const char* prev = std::getenv("XENSTORED_PATH");
    if (prev != nullptr && socket_path == prev) {
      h = xs_open(0);  // already pointing there: leave the environment alone
      err = errno;
    } else {
      std::optional<std::string> saved;
      if (prev != nullptr) saved = prev;
      if (::setenv("XENSTORED_PATH", socket_path.c_str(), 1) != 0) return unexpected_errno();
      h = xs_open(0);
      err = errno;
      if (saved) ::setenv("XENSTORED_PATH", saved->c_str(), 1);
      else ::unsetenv("XENSTORED_PATH");
    }
  }
  if (h == nullptr) return unexpected(err != 0 ? err : EIO);
  // The watch pipe is created on first xs_fileno(); make it now so
  // watch_fd() is valid (and const) from the start.
  int fd = xs_fileno(h);
  if (fd < 0) {
    err = errno;
    xs_close(h);
    return unexpected(err != 0 ? err : EIO);
  }
  return std::unique_ptr<XenStore>(new LibxenStore(h, fd));
}

LibxenStore::~LibxenStore() { xs_close(h_); }

Result<std::string> LibxenStore::read(XsTxn t, std::string_view path) noexcept {
  if (has_nul(path)) return unexpected(EINVAL);
  unsigned int len = 0;
  Malloced<char> v(static_cast<char*>(xs_read(h_, t, std::string(path).c_str(), &len)));
  if (!v) return unexpected_errno();
  return std::string(v.get(), len);
}

Status LibxenStore::write(XsTxn t, std::string_view path, std::string_view value) noexcept {
  if (has_nul(path)) return unexpected(EINVAL);
  if (value.size() > XENSTORE_PAYLOAD_MAX) return unexpected(E2BIG);
  if (!xs_write(h_, t, std::string(path).c_str(), value.data(), static_cast<unsigned int>(value.size())))
    return unexpected_errno();
  return ok();
}

Status LibxenStore::mkdir(XsTxn t, std::string_view path) noexcept {
  if (has_nul(path)) return unexpected(EINVAL);
  if (!xs_mkdir(h_, t, std::string(path).c_str())) return unexpected_errno();
  return ok();
}

Status LibxenStore::rm(XsTxn t, std::string_view path) noexcept {
  if (has_nul(path)) return unexpected(EINVAL);
  if (!xs_rm(h_, t, std::string(path).c_str())) return unexpected_errno();
  return ok();
}

Result<std::vector<std::string>> LibxenStore::directory(XsTxn t, std::string_view path) noexcept {
  if (has_nul(path)) return unexpected(EINVAL);
  unsigned int num = 0;
  errno = 0;
  Malloced<char*> names(xs_directory(h_, t, std::string(path).c_str(), &num));
  if (!names) {
    // An empty directory is a malloc(0) inside libxenstore, which may be
    // NULL without an error.
    if (errno == 0) return std::vector<std::string>{};
    return unexpected_errno();
  }
  std::vector<std::string> out;
  out.reserve(num);
  for (unsigned int i = 0; i < num; ++i) out.emplace_back(names.get()[i]);
  return out;
}

Result<std::vector<XsPerm>> LibxenStore::get_permissions(XsTxn t, std::string_view path) noexcept {
  if (has_nul(path)) return unexpected(EINVAL);
  unsigned int num = 0;
  Malloced<xs_permissions> perms(xs_get_permissions(h_, t, std::string(path).c_str(), &num));
  if (!perms) return unexpected_errno();
  std::vector<XsPerm> out;
  out.reserve(num);
  for (unsigned int i = 0; i < num; ++i) {
    const xs_permissions& p = perms.get()[i];
    if (p.id > 0xFFFF) return unexpected(EPROTO);  // not a domid: the store is broken
    out.push_back(
        XsPerm{static_cast<DomId>(p.id), static_cast<XsPerm::Access>(p.perms & (XS_PERM_READ | XS_PERM_WRITE))});
  }
  return out;
}

Status LibxenStore::set_permissions(XsTxn t, std::string_view path, std::span<const XsPerm> perms) noexcept {
  if (has_nul(path) || perms.empty()) return unexpected(EINVAL);
  std::vector<xs_permissions> raw;
  raw.reserve(perms.size());
  for (const auto& p : perms) {
    if (p.access > XsPerm::kBoth) return unexpected(EINVAL);
    unsigned int bits =
        ((p.access & XsPerm::kRead) ? XS_PERM_READ : 0u) | ((p.access & XsPerm::kWrite) ? XS_PERM_WRITE : 0u);
    raw.push_back(xs_permissions{p.domid, bits});
  }
  if (!xs_set_permissions(h_, t, std::string(path).c_str(), raw.data(), static_cast<unsigned int>(raw.size())))
    return unexpected_errno();
  return ok();
}

Status LibxenStore::watch(std::string_view path, std::string_view token) noexcept {
  if (has_nul(path) || has_nul(token)) return unexpected(EINVAL);
  if (!xs_watch(h_, std::string(path).c_str(), std::string(token).c_str())) return unexpected_errno();
  return ok();
}

Status LibxenStore::unwatch(std::string_view path, std::string_view token) noexcept {
  if (has_nul(path) || has_nul(token)) return unexpected(EINVAL);
  if (!xs_unwatch(h_, std::string(path).c_str(), std::string(token).c_str())) return unexpected_errno();
  return ok();
}

size_t LibxenStore::read_watches(std::vector<XsWatchEvent>& out, size_t max) noexcept {
  // xs_check_watch() never blocks: NULL with EAGAIN once the queue is empty
  // (which also clears the pipe), NULL with another errno if the connection
  // died; either way there is nothing more to take now.
  size_t n = 0;
  while (n < max) {
    Malloced<char*> ev(xs_check_watch(h_));
    if (!ev) break;
    out.push_back(XsWatchEvent{ev.get()[XS_WATCH_PATH], ev.get()[XS_WATCH_TOKEN]});
    ++n;
  }
  return n;
}

Result<XsTxn> LibxenStore::transaction_start() noexcept {
  xs_transaction_t t = xs_transaction_start(h_);
  if (t == XBT_NULL) return unexpected_errno();
  return static_cast<XsTxn>(t);
}

Status LibxenStore::transaction_end(XsTxn t, bool commit) noexcept {
  if (!xs_transaction_end(h_, t, /*abort=*/!commit)) return unexpected_errno();
  return ok();
}

Result<std::string> LibxenStore::domain_path(DomId domid) noexcept {
  Malloced<char> p(xs_get_domain_path(h_, domid));
  if (!p) return unexpected_errno();
  return std::string(p.get());
}

}  // namespace xenpath
