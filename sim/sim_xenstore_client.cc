#include "sim/sim_xenstore_client.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <utility>

namespace xenpath::sim {

XsSharedStore::XsSharedStore() {
  store.set_event_notify([this](XsConnId conn) { on_event(conn); });
}

// Runs under `mu` (from inside an XsStore call).
void XsSharedStore::on_event(XsConnId conn) noexcept {
  if (auto it = client_efds.find(conn); it != client_efds.end()) {
    // The queue just became non-empty: make the eventfd readable. The
    // client drains it again (under mu) when it empties the queue.
    uint64_t one = 1;
    ssize_t r = ::write(it->second, &one, sizeof(one));
    (void)r;  // an eventfd write only fails on counter overflow
    return;
  }
  socket_pending.push_back(conn);
  if (server_wake_fd >= 0 && std::this_thread::get_id() != server_thread) {
    uint64_t one = 1;
    ssize_t r = ::write(server_wake_fd, &one, sizeof(one));
    (void)r;
  }
}

Result<std::unique_ptr<SimXenStoreClient>> SimXenStoreClient::create(std::shared_ptr<XsSharedStore> shared,
                                                                     DomId self) noexcept {
  if (!shared) return unexpected(EINVAL);
  int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) return unexpected_errno();
  XsConnId conn;
  {
    std::lock_guard lock(shared->mu);
    conn = shared->store.add_connection(self, XsConnKind::kInProcess);
    shared->client_efds[conn] = efd;
  }
  return std::unique_ptr<SimXenStoreClient>(new SimXenStoreClient(std::move(shared), self, conn, efd));
}

SimXenStoreClient::SimXenStoreClient(std::shared_ptr<XsSharedStore> shared, DomId self, XsConnId conn, int efd) noexcept
    : shared_(std::move(shared)), self_(self), conn_(conn), efd_(efd) {}

SimXenStoreClient::~SimXenStoreClient() {
  {
    std::lock_guard lock(shared_->mu);
    shared_->store.remove_connection(conn_);
    shared_->client_efds.erase(conn_);
  }
  ::close(efd_);
}

Result<std::string> SimXenStoreClient::read(XsTxn t, std::string_view path) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.read(conn_, t, path);
}

Status SimXenStoreClient::write(XsTxn t, std::string_view path, std::string_view value) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.write(conn_, t, path, value);
}

Status SimXenStoreClient::mkdir(XsTxn t, std::string_view path) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.mkdir(conn_, t, path);
}

Status SimXenStoreClient::rm(XsTxn t, std::string_view path) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.rm(conn_, t, path);
}

Result<std::vector<std::string>> SimXenStoreClient::directory(XsTxn t, std::string_view path) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.directory(conn_, t, path);
}

Result<std::vector<XsPerm>> SimXenStoreClient::get_permissions(XsTxn t, std::string_view path) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.get_perms(conn_, t, path);
}

Status SimXenStoreClient::set_permissions(XsTxn t, std::string_view path, std::span<const XsPerm> perms) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.set_perms(conn_, t, path, perms);
}

Status SimXenStoreClient::watch(std::string_view path, std::string_view token) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.watch(conn_, path, token);
}

Status SimXenStoreClient::unwatch(std::string_view path, std::string_view token) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.unwatch(conn_, path, token);
}

size_t SimXenStoreClient::read_watches(std::vector<XsWatchEvent>& out, size_t max) noexcept {
  std::lock_guard lock(shared_->mu);
  size_t n = shared_->store.pop_events(conn_, out, max);
  if (shared_->store.queued_events(conn_) == 0) {
    // Empty now: reset the eventfd so it is readable exactly while events
    // are queued. Both sides run under mu, so no signal is lost.
    uint64_t v;
    ssize_t r = ::read(efd_, &v, sizeof(v));
    (void)r;  // EAGAIN when it was already clear
  }
  return n;
}

Result<XsTxn> SimXenStoreClient::transaction_start() noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.transaction_start(conn_);
}

Status SimXenStoreClient::transaction_end(XsTxn t, bool commit) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.transaction_end(conn_, t, commit);
}

Result<std::string> SimXenStoreClient::domain_path(DomId domid) noexcept {
  std::lock_guard lock(shared_->mu);
  return shared_->store.get_domain_path(conn_, domid);
}

}  // namespace xenpath::sim
