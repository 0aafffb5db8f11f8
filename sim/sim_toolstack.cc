#include "sim/sim_toolstack.h"

#include <poll.h>

#include <fmt/format.h>

namespace xenpath::sim {

namespace {

constexpr std::string_view kStateInitialising = "1";
constexpr std::string_view kStateClosing = "5";
constexpr std::string_view kStateClosed = "6";

bool exists(XenStore& xs, XsTxn t, const std::string& path) noexcept {
  auto r = xs.read(t, path);
  return r.has_value();
}

}  // namespace

std::string SimToolstack::backend_path(DomId be, std::string_view type, DomId fe, uint32_t devid) {
  return fmt::format("/local/domain/{}/backend/{}/{}/{}", be, type, fe, devid);
}

std::string SimToolstack::frontend_path(DomId fe, std::string_view frontend_type, uint32_t devid) {
  return fmt::format("/local/domain/{}/device/{}/{}", fe, frontend_type, devid);
}

Status SimToolstack::add_device(std::string_view type, DomId fe, uint32_t devid, DomId be, const XsKeys& backend_keys,
                                const XsKeys& frontend_keys, std::string_view frontend_type) noexcept {
  if (frontend_type.empty()) frontend_type = type;
  const std::string bpath = backend_path(be, type, fe, devid);
  const std::string fpath = frontend_path(fe, frontend_type, devid);
  // As libxl: the frontend's directory is the guest's; the backend domain
  // may read it. The backend's is the backend domain's; the guest may read.
  const XsPerm fperms[] = {{fe, XsPerm::kNone}, {be, XsPerm::kRead}};
  const XsPerm bperms[] = {{be, XsPerm::kNone}, {fe, XsPerm::kRead}};
  return run_transaction(xs_, [&](XsTxn t) -> Status {
    if (exists(xs_, t, fpath) || exists(xs_, t, bpath)) return unexpected(EEXIST);
    XP_TRY(xs_.mkdir(t, fpath));
    XP_TRY(xs_.set_permissions(t, fpath, fperms));
    XP_TRY(xs_.write(t, fpath + "/backend", bpath));
    XP_TRY(xs_.write(t, fpath + "/backend-id", std::to_string(be)));
    XP_TRY(xs_.write(t, fpath + "/state", kStateInitialising));
    for (const auto& [k, v] : frontend_keys) XP_TRY(xs_.write(t, fpath + "/" + k, v));

    XP_TRY(xs_.mkdir(t, bpath));
    XP_TRY(xs_.set_permissions(t, bpath, bperms));
    XP_TRY(xs_.write(t, bpath + "/frontend", fpath));
    XP_TRY(xs_.write(t, bpath + "/frontend-id", std::to_string(fe)));
    XP_TRY(xs_.write(t, bpath + "/online", "1"));
    XP_TRY(xs_.write(t, bpath + "/state", kStateInitialising));
    for (const auto& [k, v] : backend_keys) XP_TRY(xs_.write(t, bpath + "/" + k, v));
    return ok();
  });
}

Status SimToolstack::wait_backend_state(const std::string& backend, std::string_view want,
                                        std::chrono::milliseconds timeout) noexcept {
  const std::string state_path = backend + "/state";
  const std::string token = fmt::format("simtoolstack-{}", next_token_++);
  XP_TRY(xs_.watch(state_path, token));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  Status result = unexpected(ETIMEDOUT);
  std::vector<XsWatchEvent> events;
  for (;;) {
    auto v = xs_.read(kXsNoTxn, state_path);
    if (!v) {
      result = unexpected(v.error());
      break;
    }
    if (*v == want) {
      result = ok();
      break;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd pfd{xs_.watch_fd(), POLLIN, 0};
    (void)::poll(&pfd, 1, static_cast<int>(left.count()));
    // Other watches of this connection may fire too: the state node is
    // re-read whatever arrived, the events only wake us.
    events.clear();
    while (xs_.read_watches(events, 64) > 0) events.clear();
  }
  (void)xs_.unwatch(state_path, token);
  return result;
}

Status SimToolstack::remove_device(std::string_view type, DomId fe, uint32_t devid, DomId be,
                                   std::chrono::milliseconds timeout, std::string_view frontend_type) noexcept {
  const std::string bpath = backend_path(be, type, fe, devid);
  bool backend_present = true;
  auto asked = run_transaction(xs_, [&](XsTxn t) -> Status {
    auto state = xs_.read(t, bpath + "/state");
    if (!state) {
      if (state.error() != ENOENT) return unexpected(state.error());
      backend_present = false;  // backend gone: clean up the frontend only
      return ok();
    }
    backend_present = true;
    XP_TRY(xs_.write(t, bpath + "/online", "0"));
    if (*state != kStateClosed) XP_TRY(xs_.write(t, bpath + "/state", kStateClosing));
    return ok();
  });
  if (!asked) return asked;
  Status waited = ok();
  if (backend_present) {
    waited = wait_backend_state(bpath, kStateClosed, timeout);
    if (!waited && waited.error() == ENOENT) waited = ok();  // removed meanwhile
  }
  XP_TRY(force_remove(type, fe, devid, be, frontend_type));
  return waited;
}

Status SimToolstack::force_remove(std::string_view type, DomId fe, uint32_t devid, DomId be,
                                  std::string_view frontend_type) noexcept {
  if (frontend_type.empty()) frontend_type = type;
  const std::string bpath = backend_path(be, type, fe, devid);
  const std::string fpath = frontend_path(fe, frontend_type, devid);
  const std::string bparent = fmt::format("/local/domain/{}/backend/{}/{}", be, type, fe);
  return run_transaction(xs_, [&](XsTxn t) -> Status {
    // rm of a missing node whose parent exists succeeds; a vanished parent
    // (the guest's whole tree is gone) is fine too.
    if (auto r = xs_.rm(t, fpath); !r && r.error() != ENOENT) return r;
    if (auto r = xs_.rm(t, bpath); !r && r.error() != ENOENT) return r;
    // libxl__xs_path_cleanup: do not leave an empty per-guest directory.
    auto left = xs_.directory(t, bparent);
    if (left && left->empty()) XP_TRY(xs_.rm(t, bparent));
    return ok();
  });
}

}  // namespace xenpath::sim
