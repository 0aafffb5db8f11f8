// LibxenGrantTable: GrantTable over libxengnttab (/dev/xen/gntdev) on a real
// dom0 or driver domain. Owned by one thread (one gntdev handle each).
#pragma once

#include <memory>

#include "common/xen/grant_table.h"

namespace xenpath {

class LibxenGrantTable {
 public:
  static Result<std::unique_ptr<GrantTable>> open() noexcept;
};

}  // namespace xenpath
