// SimXenStoreClient: an in-process xenstore connection acting as one domain
// (what simulated guests and toolstacks use). Same semantics as a socket
// client of SimXenstored, including permission checks for unprivileged
// domains; it just skips the wire.
//
// Thread ownership: a client is owned by one thread (like a libxenstore
// handle). Every call takes the shared store lock briefly. Watch events are
// queued in the store and signalled through an eventfd that is readable
// exactly while events are queued (level-triggered, epoll-friendly). It
// touches no guest memory.
#pragma once

#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"
#include "sim/xs_store.h"

namespace xenpath::sim {

// The store and its lock, shared by SimXenstored's server thread and every
// in-process client (clients may outlive the server: they keep it alive).
// Event routing: a connection with an eventfd registered here is signalled
// directly; any other connection (a socket client) is queued for the server
// thread, which is woken through server_wake_fd. Any thread, under `mu`;
// it touches no guest memory.
class XsSharedStore {
 public:
  XsSharedStore();
  XsSharedStore(const XsSharedStore&) = delete;
  XsSharedStore& operator=(const XsSharedStore&) = delete;

  std::mutex mu;
  XsStore store;                                  // guarded by mu
  std::unordered_map<XsConnId, int> client_efds;  // guarded by mu
  std::vector<XsConnId> socket_pending;           // guarded by mu
  int server_wake_fd = -1;                        // guarded by mu; -1 when no server
  std::thread::id server_thread;                  // guarded by mu

 private:
  void on_event(XsConnId conn) noexcept;
};

class SimXenStoreClient final : public XenStore {
 public:
  static Result<std::unique_ptr<SimXenStoreClient>> create(std::shared_ptr<XsSharedStore> shared, DomId self) noexcept;
  ~SimXenStoreClient() override;
  SimXenStoreClient(const SimXenStoreClient&) = delete;
  SimXenStoreClient& operator=(const SimXenStoreClient&) = delete;

  Result<std::string> read(XsTxn t, std::string_view path) noexcept override;
  Status write(XsTxn t, std::string_view path, std::string_view value) noexcept override;
  Status mkdir(XsTxn t, std::string_view path) noexcept override;
  Status rm(XsTxn t, std::string_view path) noexcept override;
  Result<std::vector<std::string>> directory(XsTxn t, std::string_view path) noexcept override;
  Result<std::vector<XsPerm>> get_permissions(XsTxn t, std::string_view path) noexcept override;
  Status set_permissions(XsTxn t, std::string_view path, std::span<const XsPerm> perms) noexcept override;
  Status watch(std::string_view path, std::string_view token) noexcept override;
  Status unwatch(std::string_view path, std::string_view token) noexcept override;
  [[nodiscard]] int watch_fd() const noexcept override { return efd_; }
  size_t read_watches(std::vector<XsWatchEvent>& out, size_t max) noexcept override;
  Result<XsTxn> transaction_start() noexcept override;
  Status transaction_end(XsTxn t, bool commit) noexcept override;
  Result<std::string> domain_path(DomId domid) noexcept override;

  [[nodiscard]] DomId self() const noexcept { return self_; }
  [[nodiscard]] XsConnId conn_id() const noexcept { return conn_; }

 private:
  SimXenStoreClient(std::shared_ptr<XsSharedStore> shared, DomId self, XsConnId conn, int efd) noexcept;

  std::shared_ptr<XsSharedStore> shared_;
  DomId self_;
  XsConnId conn_;
  int efd_;
};

}  // namespace xenpath::sim
