// SimToolstack: what libxl does to plug and unplug split-driver devices,
// through a dom0 xenstore connection, so the backends see exactly the
// xenstore traffic a real toolstack produces.
//
// add_device writes, in ONE transaction (libxl__device_generic_add):
//   /local/domain/<fe>/device/<ftype>/<devid>          owner fe, backend domain may read
//     backend, backend-id, state=1, + frontend keys
//   /local/domain/<be>/backend/<type>/<fe>/<devid>     owner be, frontend may read
//     frontend, frontend-id, online=1, state=1, + backend keys
// remove_device is libxl's cooperative remove
// (libxl__initiate_device_generic_remove): online=0 and state=Closing
// (unless already Closed) in one transaction, a bounded wait for the backend
// to reach Closed, then both directories are removed; on timeout it falls
// back to the forced removal, as libxl does. force_remove removes both
// directories at once: hot-unplug without the guest's cooperation.
//
// Thread ownership: one thread uses a SimToolstack and the XenStore it was
// given (blocking waits happen on that thread). It touches no guest memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"

namespace xenpath::sim {

using XsKeys = std::vector<std::pair<std::string, std::string>>;

class SimToolstack {
 public:
  // `xs` must act as dom0 (or the backend domain's toolstack domain).
  explicit SimToolstack(XenStore& xs) noexcept : xs_(xs) {}

  static std::string backend_path(DomId be, std::string_view type, DomId fe, uint32_t devid);
  static std::string frontend_path(DomId fe, std::string_view frontend_type, uint32_t devid);

  // `frontend_type` empty: same as `type` (libxl uses "vbd" for the frontend
  // of "qdisk"/"vbd3" backends, hence the choice). EEXIST if either
  // directory exists already.
  Status add_device(std::string_view type, DomId fe, uint32_t devid, DomId be, const XsKeys& backend_keys,
                    const XsKeys& frontend_keys, std::string_view frontend_type = {}) noexcept;

  // Cooperative remove. ETIMEDOUT when the backend did not reach Closed in
  // time (the directories are removed anyway).
  Status remove_device(std::string_view type, DomId fe, uint32_t devid, DomId be,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10),
                       std::string_view frontend_type = {}) noexcept;

  // Removes both directories (and the backend's per-frontend directory
  // when it becomes empty) in one transaction.
  Status force_remove(std::string_view type, DomId fe, uint32_t devid, DomId be,
                      std::string_view frontend_type = {}) noexcept;

  // Waits (bounded) until <backend>/state holds `want`; ENOENT if the node
  // disappears, ETIMEDOUT on timeout.
  Status wait_backend_state(const std::string& backend, std::string_view want,
                            std::chrono::milliseconds timeout) noexcept;

 private:
  XenStore& xs_;
  uint64_t next_token_ = 0;
};

}  // namespace xenpath::sim
