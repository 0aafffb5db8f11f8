// LibxenStore: the production XenStore over libxenstore. On Xen it talks to
// xenstored through /var/run/xenstored/socket or /dev/xen/xenbus (whatever
// libxenstore picks); on the simulated host it talks to SimXenstored's unix
// socket. Same code either way.
//
// Thread ownership: one thread owns a handle (the XenStore contract).
// libxenstore runs its own reader thread once a watch is set; events are
// queued there and signalled through its pipe (watch_fd()). It touches no
// guest memory.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"

struct xs_handle;

namespace xenpath {

class LibxenStore final : public XenStore {
 public:
  // Empty `socket_path`: xs_open(0) as libxenstore decides (XENSTORED_PATH if
  // set, else /var/run/xenstored/socket, else the xenbus device). Otherwise
  // that path exactly: libxenstore 4.17 reads it from XENSTORED_PATH for both
  // its socket and its device attempt, so a missing path fails with ENOENT
  // instead of falling back to another store. The variable is set only
  // around xs_open() (serialised between opens, then restored): open handles
  // during control-plane setup, not while other threads read the environment.
  static Result<std::unique_ptr<XenStore>> open(const std::string& socket_path) noexcept;
  ~LibxenStore() override;
  LibxenStore(const LibxenStore&) = delete;
  LibxenStore& operator=(const LibxenStore&) = delete;

  Result<std::string> read(XsTxn t, std::string_view path) noexcept override;
  Status write(XsTxn t, std::string_view path, std::string_view value) noexcept override;
  Status mkdir(XsTxn t, std::string_view path) noexcept override;
  Status rm(XsTxn t, std::string_view path) noexcept override;
  Result<std::vector<std::string>> directory(XsTxn t, std::string_view path) noexcept override;
  Result<std::vector<XsPerm>> get_permissions(XsTxn t, std::string_view path) noexcept override;
  Status set_permissions(XsTxn t, std::string_view path, std::span<const XsPerm> perms) noexcept override;
  Status watch(std::string_view path, std::string_view token) noexcept override;
  Status unwatch(std::string_view path, std::string_view token) noexcept override;
  [[nodiscard]] int watch_fd() const noexcept override { return watch_fd_; }
  size_t read_watches(std::vector<XsWatchEvent>& out, size_t max) noexcept override;
  Result<XsTxn> transaction_start() noexcept override;
  Status transaction_end(XsTxn t, bool commit) noexcept override;
  Result<std::string> domain_path(DomId domid) noexcept override;

 private:
  LibxenStore(xs_handle* h, int watch_fd) noexcept : h_(h), watch_fd_(watch_fd) {}

  xs_handle* h_;
  int watch_fd_;
};

}  // namespace xenpath
