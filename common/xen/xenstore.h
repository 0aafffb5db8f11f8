// XenStore: the control-plane store, as libxenstore gives it.
//
// Implementations: LibxenStore (common/libxen/, libxenstore over
// /dev/xen/xenbus or a unix socket; the simulated host's xenstored speaks the
// wire protocol on a socket, so the daemons run this same adapter there) and
// SimXenStoreClient (common/sim/, an in-process connection acting as one
// domain: what simulated guests and toolstacks use). A handle is owned by
// one thread; watch events are queued behind watch_fd().
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/xen/types.h"

namespace xenpath {

using XsTxn = uint32_t;
inline constexpr XsTxn kXsNoTxn = 0;

struct XsPerm {
  enum Access : uint8_t { kNone = 0, kRead = 1, kWrite = 2, kBoth = 3 };
  DomId domid = 0;
  Access access = kNone;
  friend bool operator==(const XsPerm&, const XsPerm&) = default;
};

struct XsWatchEvent {
  std::string path;
  std::string token;
};

class XenStore {
 public:
  virtual ~XenStore() = default;

  virtual Result<std::string> read(XsTxn t, std::string_view path) noexcept = 0;
  virtual Status write(XsTxn t, std::string_view path, std::string_view value) noexcept = 0;
  virtual Status mkdir(XsTxn t, std::string_view path) noexcept = 0;
  virtual Status rm(XsTxn t, std::string_view path) noexcept = 0;
  virtual Result<std::vector<std::string>> directory(XsTxn t, std::string_view path) noexcept = 0;
  // First entry: owner and the access of everybody not listed.
  virtual Result<std::vector<XsPerm>> get_permissions(XsTxn t, std::string_view path) noexcept = 0;
  virtual Status set_permissions(XsTxn t, std::string_view path, std::span<const XsPerm> perms) noexcept = 0;

  // A watch fires once when set, then for every change to the path or below.
  virtual Status watch(std::string_view path, std::string_view token) noexcept = 0;
  virtual Status unwatch(std::string_view path, std::string_view token) noexcept = 0;
  [[nodiscard]] virtual int watch_fd() const noexcept = 0;
  // Moves up to `max` queued events into `out` without blocking; returns how many.
  virtual size_t read_watches(std::vector<XsWatchEvent>& out, size_t max) noexcept = 0;

  virtual Result<XsTxn> transaction_start() noexcept = 0;
  // commit=false aborts. EAGAIN: a conflicting change; redo the transaction.
  virtual Status transaction_end(XsTxn t, bool commit) noexcept = 0;

  // "/local/domain/<domid>" as the store reports it.
  virtual Result<std::string> domain_path(DomId domid) noexcept = 0;
};

// Runs fn(txn) -> Result<T> in a transaction, redoing it on EAGAIN (bounded:
// a store that conflicts this often is broken, not busy).
template <typename Fn>
auto run_transaction(XenStore& xs, Fn&& fn, int max_attempts = 32) noexcept -> decltype(fn(XsTxn{})) {
  for (int attempt = 0; attempt < max_attempts; ++attempt) {
    auto txn = xs.transaction_start();
    if (!txn) return unexpected(txn.error());
    auto r = fn(*txn);
    if (!r) {
      (void)xs.transaction_end(*txn, false);
      return r;
    }
    auto end = xs.transaction_end(*txn, true);
    if (end) return r;
    if (end.error() != EAGAIN) return unexpected(end.error());
  }
  return unexpected(EAGAIN);
}

}  // namespace xenpath
