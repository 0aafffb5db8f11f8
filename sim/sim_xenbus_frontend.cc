#include "sim/sim_xenbus_frontend.h"

#include <poll.h>

#include <atomic>
#include <charconv>
#include <vector>

#include <fmt/format.h>

namespace xenpath::sim {

namespace {

// Watch tokens must be unique per connection; several frontends of one
// guest share its connection.
std::atomic<uint64_t> g_next_token{0};

}  // namespace

Result<std::unique_ptr<SimXenbusFrontend>> SimXenbusFrontend::attach(XenStore& xs, std::string frontend_path,
                                                                     std::chrono::milliseconds timeout) noexcept {
  XP_ASSIGN_OR_RETURN(std::string backend, xs.read(kXsNoTxn, frontend_path + "/backend"));
  XP_ASSIGN_OR_RETURN(std::string backend_id_str, xs.read(kXsNoTxn, frontend_path + "/backend-id"));
  uint32_t be = 0;
  auto [p, ec] = std::from_chars(backend_id_str.data(), backend_id_str.data() + backend_id_str.size(), be);
  if (ec != std::errc{} || p != backend_id_str.data() + backend_id_str.size() || be >= 0x7FF0)
    return unexpected(EINVAL);
  std::string token = fmt::format("simfront-{}", g_next_token.fetch_add(1));
  XP_TRY(xs.watch(backend + "/state", token));
  return std::unique_ptr<SimXenbusFrontend>(new SimXenbusFrontend(xs, std::move(frontend_path), std::move(backend),
                                                                  static_cast<DomId>(be), std::move(token), timeout));
}

SimXenbusFrontend::SimXenbusFrontend(XenStore& xs, std::string frontend, std::string backend, DomId backend_id,
                                     std::string token, std::chrono::milliseconds timeout) noexcept
    : xs_(xs),
      frontend_(std::move(frontend)),
      backend_(std::move(backend)),
      backend_id_(backend_id),
      token_(std::move(token)),
      timeout_(timeout) {}

SimXenbusFrontend::~SimXenbusFrontend() { (void)xs_.unwatch(backend_ + "/state", token_); }

Status SimXenbusFrontend::write_state(XenbusState s) noexcept {
  // As xenbus_switch_state(): never recreate a state node the toolstack
  // removed (the device is being torn down).
  const std::string path = frontend_ + "/state";
  return run_transaction(xs_, [&](XsTxn t) -> Status {
    auto cur = xs_.read(t, path);
    if (!cur) return cur.error() == ENOENT ? ok() : Status(unexpected(cur.error()));
    return xs_.write(t, path, state_value(s));
  });
}

Status SimXenbusFrontend::write_raw(std::string_view key, std::string_view value) noexcept {
  return xs_.write(kXsNoTxn, fmt::format("{}/{}", frontend_, key), value);
}

Result<XenbusState> SimXenbusFrontend::backend_state() noexcept {
  auto r = xs_.read(kXsNoTxn, backend_ + "/state");
  // A guest may not even learn that a node it cannot read is missing: once
  // the toolstack removed the backend's per-guest directory, EACCES is how
  // "gone" looks from here.
  if (!r) return unexpected(r.error() == EACCES ? ENOENT : r.error());
  std::string v = std::move(*r);
  auto s = parse_xenbus_state(v);
  if (!s) return unexpected(EPROTO);
  return *s;
}

Result<XenbusState> SimXenbusFrontend::wait_backend(uint32_t accept) noexcept {
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  std::vector<XsWatchEvent> events;
  for (;;) {
    auto s = backend_state();
    if (!s && s.error() != EPROTO) return unexpected(s.error());
    if (s && (accept & bit(*s)) != 0) return *s;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return unexpected(ETIMEDOUT);
    pollfd pfd{xs_.watch_fd(), POLLIN, 0};
    // The connection may be shared with other frontends of the guest, whose
    // events wake us too: the state is re-read whatever arrived. Cap each
    // sleep so that an event another frontend drained cannot strand us.
    const int wait_ms = static_cast<int>(std::min<int64_t>(left.count(), 20));
    (void)::poll(&pfd, 1, wait_ms);
    events.clear();
    while (xs_.read_watches(events, 64) > 0) events.clear();
  }
}

Status SimXenbusFrontend::connect(const XsKeys& keys) noexcept {
  XP_TRY(publish(keys));
  return await_connected();
}

Status SimXenbusFrontend::publish(const XsKeys& keys) noexcept {
  XP_TRY(wait_backend(bit(XenbusState::kInitWait)));
  return run_transaction(xs_, [&](XsTxn t) -> Status {
    for (const auto& [k, v] : keys) XP_TRY(xs_.write(t, fmt::format("{}/{}", frontend_, k), v));
    return xs_.write(t, frontend_ + "/state", state_value(XenbusState::kInitialised));
  });
}

Status SimXenbusFrontend::await_connected() noexcept {
  XP_ASSIGN_OR_RETURN(XenbusState s, wait_backend(bit(XenbusState::kConnected) | bit(XenbusState::kClosing) |
                                                  bit(XenbusState::kClosed)));
  if (s != XenbusState::kConnected) return unexpected(EPIPE);
  return write_state(XenbusState::kConnected);
}

Status SimXenbusFrontend::close() noexcept {
  XP_TRY(write_state(XenbusState::kClosing));
  auto s = wait_backend(bit(XenbusState::kClosing) | bit(XenbusState::kClosed));
  if (!s && s.error() != ENOENT) return unexpected(s.error());
  XP_TRY(write_state(XenbusState::kClosed));
  if (!s) return ok();  // the backend is gone already
  auto c = wait_backend(bit(XenbusState::kClosed));
  if (!c && c.error() != ENOENT) return unexpected(c.error());
  return ok();
}

Status SimXenbusFrontend::restart() noexcept {
  XP_TRY(write_state(XenbusState::kInitialising));
  XP_TRY(wait_backend(bit(XenbusState::kInitWait)));
  return ok();
}

}  // namespace xenpath::sim
