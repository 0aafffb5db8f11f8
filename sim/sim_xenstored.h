// SimXenstored: the simulated host's xenstored. It speaks the real xenstore
// wire protocol (<xen/io/xs_wire.h>) on a unix socket, so the daemons run
// the production libxenstore adapter (LibxenStore) against it through
// XENSTORED_PATH, and xenstore-ls/-read/-write/-watch/-rm/-chmod work on it
// too. Every socket connection is privileged dom0, as xenstored treats its
// socket. Simulated guests and toolstacks get in-process connections acting
// as a given domain (connect()), with xenstored's permission checks.
//
// Semantics are XsStore's (sim/xs_store.h). Wire behaviour follows
// xenstored: replies echo req_id and tx_id and carry the request's type;
// errors are XS_ERROR with the errno name ("ENOENT\0"); watch events are
// XS_WATCH_EVENT with req_id 0 and tx_id 0; unknown request types get
// ENOSYS; a message longer than XENSTORE_PAYLOAD_MAX drops the connection.
// A connection's watches and transactions die with it.
//
// Thread ownership: one server thread (epoll) owns the sockets. The store
// sits behind one mutex shared with in-process clients; public methods may
// be called from any thread. It touches no guest memory.
#pragma once

// <xen/io/xs_wire.h> needs uint32_t, and errno values for its xsd_errors table.
#include <cerrno>
#include <cstdint>
// clang-format off
#include <xen/io/xs_wire.h>
// clang-format on

#include <cstddef>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"
#include "sim/xs_store.h"

namespace xenpath::sim {

class SimXenstored {
 public:
  // Listens on `socket_path`; empty = a fresh private path (a mkdtemp
  // directory under /tmp, removed again on destruction). A stale socket
  // nobody listens on is replaced; a live one is EADDRINUSE; a path that is
  // not a socket is EEXIST (never deleted).
  static Result<std::unique_ptr<SimXenstored>> start(const std::string& socket_path) noexcept;
  // Stops the thread, closes the connections, unlinks the socket.
  ~SimXenstored();
  SimXenstored(const SimXenstored&) = delete;
  SimXenstored& operator=(const SimXenstored&) = delete;

  [[nodiscard]] const std::string& socket_path() const noexcept;

  // An in-process connection acting as `self` (dom0 is privileged).
  Result<std::unique_ptr<XenStore>> connect(DomId self) noexcept;

  // The hypervisor side of domain lifetime: @introduceDomain on first
  // introduction; @releaseDomain on release (see XsStore::release_domain).
  void introduce_domain(DomId domid) noexcept;
  void release_domain(DomId domid) noexcept;

  // Sum over all unix-socket connections, closed ones included (the daemons).
  [[nodiscard]] XsOpStats socket_stats() const noexcept;
  // Sum over the in-process connections acting as `domid`, closed ones included.
  [[nodiscard]] XsOpStats domain_stats(DomId domid) const noexcept;
  void reset_stats() noexcept;

  [[nodiscard]] size_t watch_count() const noexcept;  // live watches, all connections
  [[nodiscard]] size_t node_count() const noexcept;
  [[nodiscard]] size_t open_transactions() const noexcept;
  [[nodiscard]] size_t socket_connections() const noexcept;  // live socket clients

 private:
  class Impl;
  explicit SimXenstored(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xenpath::sim
